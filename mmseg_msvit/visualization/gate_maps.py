"""Draw the gate's decisions over an image: fine regions tinted, every token's outline drawn."""
from typing import Sequence

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
    outlined once with ``coarse_colour``. The image is cropped/padded to the decision grid.

    Args:
        image (ndarray): (H, W, 3) uint8 RGB, the image the gate saw (after resizing).
        fine_mask (ndarray): (Hc, Wc) bool, True = region split into fine tokens.
        coarse_patch_size, fine_patch_size (int): region and fine-token sides in pixels.

    Returns:
        ndarray: (Hc*S_c, Wc*S_c, 3) uint8.
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
    return np.clip(canvas, 0, 255).astype(np.uint8)
