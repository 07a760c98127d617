"""Draw the gate's decisions over an image: fine regions tinted, every token's outline drawn."""
from typing import List, Sequence, Tuple

import numpy as np


def draw_gate_map(image: np.ndarray,
                  fine_mask: np.ndarray,
                  coarse_patch_size: int = 32,
                  fine_patch_size: int = 16,
                  fine_colour: Sequence[int] = (255, 64, 0),
                  coarse_colour: Sequence[int] = (0, 160, 255),
                  alpha: float = 0.2) -> np.ndarray:
    """Overlay the mixed-scale tokenization on an RGB image.

    Fine regions are tinted with ``fine_colour`` and outlined per fine token; coarse regions are
    outlined once with ``coarse_colour``. The result has the image's size: the decision grid
    covers the input padded to a multiple of the region, and the padding is not drawn.

    Args:
        image (ndarray): (H, W, 3) uint8 RGB, the image the gate saw (after resizing).
        fine_mask (ndarray): (Hc, Wc) bool, True = region split into fine tokens.
        coarse_patch_size, fine_patch_size (int): region and fine-token sides in pixels.

    Returns:
        ndarray: (min(H, Hc*S_c), min(W, Wc*S_c), 3) uint8.
    """
    fine_mask = np.asarray(fine_mask, dtype=bool)
    rows, cols = fine_mask.shape
    height, width = rows * coarse_patch_size, cols * coarse_patch_size
    canvas = np.zeros((height, width, 3), np.float64)
    crop = image[:height, :width, :3].astype(np.float64)
    canvas[:crop.shape[0], :crop.shape[1]] = crop
    tint = np.kron(fine_mask, np.ones((coarse_patch_size, coarse_patch_size), bool))
    canvas[tint] = (1 - alpha) * canvas[tint] + alpha * np.asarray(fine_colour, np.float64)
    for row in range(rows):
        for col in range(cols):
            y0, x0 = row * coarse_patch_size, col * coarse_patch_size
            if fine_mask[row, col]:
                step, colour = fine_patch_size, fine_colour
            else:
                step, colour = coarse_patch_size, coarse_colour
            for y in range(y0, y0 + coarse_patch_size, step):
                for x in range(x0, x0 + coarse_patch_size, step):
                    canvas[y, x:x + step] = colour
                    canvas[y:y + step, x] = colour
    return np.clip(canvas, 0, 255).astype(np.uint8)[:crop.shape[0], :crop.shape[1]]


#: tints tried for the fine and coarse regions, most distinctive first
_TINTS = ((255, 0, 255), (0, 255, 0), (255, 255, 255), (255, 128, 0), (128, 0, 255),
          (0, 0, 0), (255, 255, 0), (0, 255, 255))


def tint_colours(palette: Sequence[Sequence[int]] = ()) -> Tuple[tuple, tuple]:
    """(fine, coarse) outline colours farthest from every class colour of ``palette``, so a
    tinted region is not read as a class of the prediction beside it."""
    if not len(palette):
        return _TINTS[0], _TINTS[1]
    colours = np.asarray(palette, np.float64).reshape(-1, 3)

    def distance(tint):
        return float(np.min(np.linalg.norm(colours - np.asarray(tint, np.float64), axis=1)))

    ranked = sorted(_TINTS, key=distance, reverse=True)
    return ranked[0], ranked[1]


def present_classes(label: np.ndarray, classes: Sequence[str],
                    palette: Sequence[Sequence[int]], limit: int = 12) -> List[tuple]:
    """(class name, RGB colour) of the classes in ``label``, the largest first (at most
    ``limit``); ids outside ``classes`` (ignore index) are left out."""
    ids, counts = np.unique(np.asarray(label), return_counts=True)
    order = np.argsort(-counts, kind='stable')
    out = []
    for index in order:
        class_id = int(ids[index])
        if class_id < len(classes) and class_id < len(palette):
            out.append((str(classes[class_id]), tuple(int(c) for c in palette[class_id])))
    return out[:limit]
