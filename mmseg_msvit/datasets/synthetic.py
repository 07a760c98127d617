"""Deterministic synthetic datasets in the real ADE20K, Cityscapes and ImageNet folder layouts.

Pretrained weights and the real datasets cannot be downloaded everywhere; the runnable default of
this project is data generated here. The scenes are built to make the method's point:

* large smooth regions (flat colour with mild noise, gradients) where one 32x32 token suffices;
* clutter where 16x16 detail decides the label: discs (radius 5-11 px), boxes (10-22 px), poles
  (4-7 px wide) - smaller than a 32x32 region, so one coarse token blurs their outline over its
  whole region, but large enough for stride-16 features to localise - and a striped texture
  (2 px stripes) whose *mean colour equals the wall's*, so a 2x2-average-pooled (coarse) patch
  cannot tell it from wall at all.

Layouts (written exactly as mmseg / mmpretrain expect them):

* ``ade20k``: ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``;
  label 0 = other/ignore, 1..K = :data:`SCENE_CLASSES` (read by ``ADE20KDataset`` with
  ``reduce_zero_label=True``, or by :class:`SyntheticScenesDataset` with our class names).
* ``cityscapes``: ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png``; train ids 0..K-1, 255 = ignore.
* ``imagenet``: ``train/<class>/*.JPEG``, ``val/<class>/*.JPEG`` plus ``meta/{train,val}.txt``
  (``<class>/<file> <label>``), read by mmpretrain's ``ImageNet`` / ``CustomDataset``. Some
  classes differ only in small details (a few 5 px dots, a small striped patch).

Everything is a pure function of ``seed``: the same call writes byte-identical files.
"""
import os
import os.path as osp
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    'SCENE_CLASSES', 'SCENE_PALETTE', 'CLS_CLASSES', 'LAYOUTS', 'make_synthetic',
    'render_scene', 'render_shifted_scene', 'SCENE_STYLES', 'render_classification_image'
]

#: Scene classes, label 1..K in ADE layout (0 = other), train id 0..K-1 in Cityscapes layout.
SCENE_CLASSES = ('sky', 'wall', 'floor', 'stripes', 'pole', 'ball', 'box')
SCENE_PALETTE = [[70, 130, 180], [180, 120, 120], [80, 50, 50], [255, 200, 0], [153, 153, 153],
                 [220, 20, 60], [0, 200, 255]]
#: Classification classes; 'plain' vs 'dots' vs 'striped_patch' differ only in small details.
CLS_CLASSES = ('plain', 'dots', 'striped_patch', 'big_disc', 'cross')

LAYOUTS = ('ade20k', 'cityscapes', 'imagenet')
_SPLITS = {
    'ade20k': ('training', 'validation'),
    'cityscapes': ('train', 'val'),
    'imagenet': ('train', 'val'),
}
_CITIES = ('synthville', 'gradient_city')


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], amplitude: float) -> np.ndarray:
    """Mild, spatially smooth noise (coarse random field upsampled)."""
    h, w = shape
    coarse = rng.normal(0.0, amplitude, size=(max(2, h // 32 + 2), max(2, w // 32 + 2), 3))
    up = np.stack([
        np.asarray(
            Image.fromarray(coarse[..., c].astype(np.float32), mode='F').resize(
                (w, h), Image.BILINEAR)) for c in range(3)
    ], axis=-1)
    return up + rng.normal(0.0, amplitude / 4, size=(h, w, 3))


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: int = 20) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float64) + rng.integers(-amount, amount + 1, 3), 0, 255)


def _finish_scene(rng: np.random.Generator, image: np.ndarray,
                  label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Both styles' last steps: sometimes one random-coloured ellipse of 'other' (label 0,
    ignored by the metrics), then mild pixel noise; uint8 image and label."""
    h, w = label.shape
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    if rng.random() < 0.5:
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(6, h // 6 + 7), rng.integers(6, w // 6 + 7)
        region = ((rows - cy) / ry)**2 + ((cols - cx) / rx)**2 <= 1
        image[region] = rng.integers(0, 256, 3)
        label[region] = 0
    image = np.clip(image + rng.normal(0, 2.0, image.shape), 0, 255).astype(np.uint8)
    return image, label


def render_scene(rng: np.random.Generator, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: (image (H, W, 3) uint8, label (H, W) uint8 with 0 = other, 1..K classes)."""
    h, w = size
    image = np.zeros((h, w, 3), np.float64)
    label = np.zeros((h, w), np.uint8)
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]

    # Large smooth regions: sky (vertical gradient) / wall (flat + mild noise) / floor (gradient).
    horizon = int(h * rng.uniform(0.25, 0.45))
    floor_line = int(h * rng.uniform(0.65, 0.85))
    slope = rng.uniform(-0.15, 0.15)
    floor_edge = floor_line + slope * (cols - w / 2)
    sky_top, sky_bottom = _jitter(rng, (90, 150, 230)), _jitter(rng, (190, 220, 250))
    t = np.clip(rows / max(horizon, 1), 0, 1)[..., None]
    sky = sky_top * (1 - t) + sky_bottom * t
    wall_colour = _jitter(rng, (175, 120, 110), 30)
    wall = np.broadcast_to(wall_colour, (h, w, 3)) + _smooth_noise(rng, (h, w), 6.0)
    floor_near, floor_far = _jitter(rng, (60, 40, 35)), _jitter(rng, (120, 90, 70))
    tf = np.clip((rows - floor_line) / max(h - floor_line, 1), 0, 1)[..., None]
    floor = np.broadcast_to(floor_far * (1 - tf) + floor_near * tf, (h, w, 3))

    is_sky = np.broadcast_to(rows < horizon, (h, w))
    is_floor = rows >= floor_edge
    image[:] = wall
    label[:] = 2
    image[is_sky] = np.broadcast_to(sky, (h, w, 3))[is_sky]
    label[is_sky] = 1
    image[is_floor] = floor[is_floor]
    label[is_floor] = 3

    # Striped texture patches on the wall: same mean colour as the wall, period 4 px.
    for _ in range(rng.integers(1, 3)):
        ph, pw = rng.integers(h // 8, h // 4 + 1), rng.integers(w // 8, w // 4 + 1)
        y0 = rng.integers(horizon, max(horizon + 1, int(floor_line) - ph))
        x0 = rng.integers(0, max(1, w - pw))
        amp = rng.uniform(45, 70)
        period_axis = cols if rng.random() < 0.5 else rows
        sign = np.where((period_axis // 2) % 2 == 0, 1.0, -1.0)
        stripe = wall_colour + amp * np.broadcast_to(sign, (h, w))[..., None]
        region = np.zeros((h, w), bool)
        region[y0:y0 + ph, x0:x0 + pw] = True
        image[region] = stripe[region]
        label[region] = 4

    # Thin poles (4-7 px wide), spanning floor to above the horizon.
    for _ in range(rng.integers(1, 4)):
        width = int(rng.integers(4, 8))
        x = rng.integers(0, w - width)
        top = rng.integers(0, max(1, horizon))
        region = np.zeros((h, w), bool)
        region[top:h, x:x + width] = True
        image[region] = _jitter(rng, (150, 150, 150), 10)
        label[region] = 5

    # Small discs (radius 5-11 px) and small boxes (10-22 px) anywhere.
    for _ in range(rng.integers(3, 8)):
        cy, cx, radius = rng.integers(0, h), rng.integers(0, w), rng.integers(5, 12)
        region = (rows - cy)**2 + (cols - cx)**2 <= radius**2
        image[region] = _jitter(rng, (220, 30, 60), 25)
        label[region] = 6
    for _ in range(rng.integers(2, 6)):
        side = int(rng.integers(10, 23))
        y0, x0 = rng.integers(0, h - side), rng.integers(0, w - side)
        image[y0:y0 + side, x0:x0 + side] = _jitter(rng, (20, 190, 240), 25)
        label[y0:y0 + side, x0:x0 + side] = 7

    return _finish_scene(rng, image, label)


def render_shifted_scene(rng: np.random.Generator,
                         size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """A scene of the same 7 classes drawn differently from :func:`render_scene` (a check on
    scenes the models were not designed on, ``style='shifted'``): another palette (dusk sky,
    grey-green wall, blue boxes, yellow balls), gravel floors (per-pixel texture: detailed pixels
    with ONE label, where a detail rule wastes fine tokens), stripes at 45 degrees, tilted poles,
    elliptic balls. (image (H, W, 3) uint8, label (H, W) uint8 with 0 = other, 1..K classes.)"""
    h, w = size
    image = np.zeros((h, w, 3), np.float64)
    label = np.zeros((h, w), np.uint8)
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]

    horizon = int(h * rng.uniform(0.2, 0.4))
    floor_line = int(h * rng.uniform(0.6, 0.8))
    slope = rng.uniform(-0.25, 0.25)
    floor_edge = floor_line + slope * (cols - w / 2)
    sky_top, sky_bottom = _jitter(rng, (60, 40, 110)), _jitter(rng, (240, 150, 90))
    t = np.clip(rows / max(horizon, 1), 0, 1)[..., None]
    sky = sky_top * (1 - t) + sky_bottom * t
    wall_colour = _jitter(rng, (120, 140, 120), 25)
    wall = np.broadcast_to(wall_colour, (h, w, 3)) + _smooth_noise(rng, (h, w), 8.0)
    gravel_base = _jitter(rng, (110, 100, 85), 15)
    gravel = gravel_base + rng.normal(0, 1, (h, w, 1)) * rng.uniform(25, 40) + \
        rng.normal(0, 8, (h, w, 3))

    is_sky = np.broadcast_to(rows < horizon, (h, w))
    is_floor = rows >= floor_edge
    image[:] = wall
    label[:] = 2
    image[is_sky] = np.broadcast_to(sky, (h, w, 3))[is_sky]
    label[is_sky] = 1
    image[is_floor] = gravel[is_floor]
    label[is_floor] = 3

    # Diagonal stripes on the wall (45 degrees, period 4-6 px), mean colour of the wall.
    for _ in range(rng.integers(1, 3)):
        ph, pw = rng.integers(h // 8, h // 4 + 1), rng.integers(w // 8, w // 4 + 1)
        y0 = rng.integers(horizon, max(horizon + 1, int(floor_line) - ph))
        x0 = rng.integers(0, max(1, w - pw))
        period = int(rng.integers(2, 4))
        diagonal = (rows + cols) if rng.random() < 0.5 else (rows - cols + w)
        sign = np.where((diagonal // period) % 2 == 0, 1.0, -1.0)
        stripe = wall_colour + rng.uniform(40, 65) * sign[..., None]
        region = np.zeros((h, w), bool)
        region[y0:y0 + ph, x0:x0 + pw] = True
        image[region] = stripe[region]
        label[region] = 4

    # Tilted poles (4-7 px wide, up to 25 degrees off vertical).
    for _ in range(rng.integers(1, 4)):
        width = rng.uniform(4, 8)
        x_bottom = rng.uniform(0, w)
        lean = np.tan(np.deg2rad(rng.uniform(-25, 25)))
        top = rng.integers(0, max(1, horizon))
        centre = x_bottom + lean * (h - rows)
        region = (np.abs(cols - centre) <= width / 2) & (rows >= top)
        image[region] = _jitter(rng, (60, 60, 70), 10)
        label[region] = 5

    # Elliptic balls (radii 4-12 px) and boxes (10-22 px).
    for _ in range(rng.integers(3, 8)):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(4, 13), rng.integers(4, 13)
        region = ((rows - cy) / ry)**2 + ((cols - cx) / rx)**2 <= 1
        image[region] = _jitter(rng, (235, 210, 40), 20)
        label[region] = 6
    for _ in range(rng.integers(2, 6)):
        side_y, side_x = int(rng.integers(10, 23)), int(rng.integers(10, 23))
        y0, x0 = rng.integers(0, h - side_y), rng.integers(0, w - side_x)
        image[y0:y0 + side_y, x0:x0 + side_x] = _jitter(rng, (70, 60, 200), 25)
        label[y0:y0 + side_y, x0:x0 + side_x] = 7

    return _finish_scene(rng, image, label)


#: scene renderers by ``style``
SCENE_STYLES = {'standard': render_scene, 'shifted': render_shifted_scene}


#: the configs' input normalisation (ImageNet mean and std, RGB)
NORMALISATION = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def scene_batch(batch: int, size: int, seed: int = 0):
    """(batch, 3, size, size) float tensor of validation-style scenes, normalised as the configs
    do: what the speed benchmarks feed the models (deterministic in ``seed``)."""
    import torch
    images = [render_scene(np.random.default_rng([seed, 1, i]), (size, size))[0]
              for i in range(batch)]
    img = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    mean, std = (torch.tensor(NORMALISATION[k])[:, None, None] for k in ('mean', 'std'))
    return (img - mean) / std


def render_classification_image(rng: np.random.Generator, class_index: int,
                                size: Tuple[int, int]) -> np.ndarray:
    """One image of class ``CLS_CLASSES[class_index]`` (H, W, 3) uint8.

    All classes share the same kind of smooth background; 'dots' and 'striped_patch' add only a
    few small details, so a model that sees the image only at 32 px resolution confuses them with
    'plain'.
    """
    h, w = size
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    top, bottom = _jitter(rng, (120, 140, 160), 60), _jitter(rng, (120, 140, 160), 60)
    t = (rows / max(h - 1, 1))[..., None]
    image = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    image += _smooth_noise(rng, (h, w), 5.0)
    name = CLS_CLASSES[class_index]
    mean_colour = image.mean(axis=(0, 1))
    if name == 'dots':
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.integers(3, h - 3), rng.integers(3, w - 3)
            region = (rows - cy)**2 + (cols - cx)**2 <= 2.5**2
            image[region] = _jitter(rng, (30, 30, 30), 20)
    elif name == 'striped_patch':
        side = max(8, min(h, w) // 5)
        y0, x0 = rng.integers(0, h - side), rng.integers(0, w - side)
        sign = np.where((cols // 2) % 2 == 0, 1.0, -1.0)
        stripe = mean_colour + 60 * np.broadcast_to(sign, (h, w))[..., None]
        image[y0:y0 + side, x0:x0 + side] = stripe[y0:y0 + side, x0:x0 + side]
    elif name == 'big_disc':
        cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
        radius = rng.uniform(0.2, 0.3) * min(h, w)
        region = (rows - cy)**2 + (cols - cx)**2 <= radius**2
        image[region] = _jitter(rng, (230, 200, 40), 25)
    elif name == 'cross':
        cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        colour = _jitter(rng, (240, 240, 240), 15)
        image[cy - 1:cy + 1, :] = colour
        image[:, cx - 1:cx + 1] = colour
    return np.clip(image + rng.normal(0, 2.0, image.shape), 0, 255).astype(np.uint8)


def _check_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise OSError(f'make_synthetic: cannot create out_dir={out_dir!r}: {err}') from err
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f'make_synthetic: out_dir={out_dir!r} is not writable')


def make_synthetic(out_dir: str,
                   layout: str = 'ade20k',
                   num_train: int = 64,
                   num_val: int = 16,
                   img_size: Tuple[int, int] = (256, 256),
                   seed: int = 0,
                   style: str = 'standard') -> Dict[str, int]:
    """Write a synthetic dataset under ``out_dir`` in one of :data:`LAYOUTS`.

    Args:
        out_dir (str): root folder (created if missing; must be writable).
        layout (str): 'ade20k', 'cityscapes' or 'imagenet'.
        num_train (int): training images (imagenet: images per class in train).
        num_val (int): validation images (imagenet: images per class in val).
        img_size (tuple[int, int]): (H, W) of every image.
        seed (int): everything written is a pure function of it.
        style (str): scenes (ade20k / cityscapes layouts) drawn by :func:`render_scene`
            ('standard') or :func:`render_shifted_scene` ('shifted': the same classes drawn
            differently). Default: 'standard'.

    Returns:
        dict: number of images written per split, e.g. ``{'train': 64, 'val': 16}``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'make_synthetic: unknown layout={layout!r}; expected one of {LAYOUTS}')
    if style not in SCENE_STYLES:
        raise ValueError(f'make_synthetic: unknown style={style!r}; expected one of '
                         f'{tuple(SCENE_STYLES)}')
    if num_train < 1 or num_val < 1:
        raise ValueError('make_synthetic: num_train and num_val must be >= 1 (zero images make '
                         f'an empty dataset), got num_train={num_train}, num_val={num_val}')
    h, w = img_size
    if h < 32 or w < 32:
        raise ValueError(f'make_synthetic: img_size={tuple(img_size)} is smaller than one 32x32 '
                         'coarse region')
    _check_out_dir(out_dir)
    counts = {}
    for split_index, (split, count) in enumerate(zip(_SPLITS[layout], (num_train, num_val))):
        short_split = ('train', 'val')[split_index]
        if layout == 'imagenet':
            counts[short_split] = _write_imagenet_split(out_dir, split, split_index, count,
                                                        (h, w), seed)
        else:
            counts[short_split] = _write_scene_split(out_dir, layout, split, split_index, count,
                                                     (h, w), seed, SCENE_STYLES[style])
    return counts


def _write_scene_split(out_dir, layout, split, split_index, count, size, seed,
                       render=render_scene) -> int:
    for i in range(count):
        rng = np.random.default_rng([seed, split_index, i])
        image, label = render(rng, size)
        if layout == 'ade20k':
            stem = f'synthetic_{split}_{i:05d}'
            img_path = osp.join(out_dir, 'images', split, stem + '.jpg')
            ann_path = osp.join(out_dir, 'annotations', split, stem + '.png')
        else:
            city = _CITIES[i % len(_CITIES)]
            stem = f'{city}_{i:06d}_000019'
            img_path = osp.join(out_dir, 'leftImg8bit', split, city, stem + '_leftImg8bit.png')
            ann_path = osp.join(out_dir, 'gtFine', split, city, stem + '_gtFine_labelTrainIds.png')
            label = np.where(label == 0, 255, label - 1).astype(np.uint8)
        os.makedirs(osp.dirname(img_path), exist_ok=True)
        os.makedirs(osp.dirname(ann_path), exist_ok=True)
        if img_path.endswith('.jpg'):
            Image.fromarray(image).save(img_path, quality=95)
        else:
            Image.fromarray(image).save(img_path)
        Image.fromarray(label, mode='L').save(ann_path)
    return count


def _write_imagenet_split(out_dir, split, split_index, per_class, size, seed) -> int:
    lines = []
    for class_index, name in enumerate(CLS_CLASSES):
        folder = osp.join(out_dir, split, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, 100 + split_index, class_index, i])
            image = render_classification_image(rng, class_index, size)
            fname = f'{name}_{split}_{i:05d}.JPEG'
            Image.fromarray(image).save(osp.join(folder, fname), format='JPEG', quality=95)
            lines.append(f'{name}/{fname} {class_index}')
    os.makedirs(osp.join(out_dir, 'meta'), exist_ok=True)
    with open(osp.join(out_dir, 'meta', f'{split}.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return per_class * len(CLS_CLASSES)
