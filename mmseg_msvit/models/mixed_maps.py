"""Feature maps at two resolutions, region by region: the neck and the decode head spend their
compute where the tokens are fine (docs/method.md, "Mixed-scale decoding").

A region the scale decision left coarse is one token: its features are uniform by the gate's
choice, so every neck and head layer that runs finer than the token grid computes it at
``1/reduction`` of the layer's resolution and upsamples it at the end; fine regions run at full
resolution. Each region is a square block (8x8 at 1/4 of a 512 px input's resolution for 32 px
regions, 4x4 at 1/8; a coarse one 4x4 and 2x2 at ``reduction=2``), a level's pixels are rows
(channels last), and each layer runs over a whole batch's rows at once.

Convolutions and bilinear resampling read across block borders, through a one-pixel halo filled
from the neighbours (SegBlocks' BlockPad, Verelst and Tuytelaars): a fine block reads a coarse
neighbour's nearest pixel, a coarse block a fine neighbour's pixels averaged ``reduction`` x
``reduction`` (the same pooling as coarse patches); outside the input the halo is zero for a
convolution (its zero padding) and the border pixel for a resampling (what ``F.interpolate``
does at a border). A 3x3 convolution multiplies every pixel by its nine taps once and sums each
output pixel's taps from its own and its neighbours' products (:func:`_conv_by_tap_products`), so
halos are read, never computed or copied. Hence, with the same weights:

* every region fine: exactly the dense modules (mmseg's ``MultiLevelNeck`` / ``UPerHead``);
* every region coarse: exactly the same modules on the maps at ``1/reduction`` resolution;
* mixed: no seams, and the work is that of the blocks that ran (halos are read, not computed).

Nothing here keeps state between forwards: a :class:`RegionBlocks` is made per forward from the
backbone's layout and travels with the maps (:class:`MixedScaleMap`). In budget mode the number
of fine regions per image is known from shapes, so every shape is static (torch.export, ONNX).

Scales are relative to the token grid (the backbone's dense maps, stride S_f = 16): a level of
scale 4 is at 1/4 of the input's resolution for S_f = 16.
"""
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['RegionBlocks', 'MixedScaleMap', 'resample', 'resample_into', 'conv_module', 'add', 'cat',
           'classify', 'pixels_per_image', 'conv_module_macs']


def _bilinear_axis(start: torch.Tensor, side: int, size: int, target_size: int):
    """Along one axis, for the ``side`` target pixels of each region starting at ``start``
    (regions, in region units): the two source pixels (of ``size``) that bilinear resampling to
    ``target_size`` pixels reads (align_corners=False, clamped at the border as
    ``F.interpolate``) and the weight of the second. Returns (low, high, weight), (N, side)."""
    steps = torch.arange(side, device=start.device)
    target = (start[:, None] * side + steps[None, :]).double()
    source = ((target + 0.5) * (size / target_size) - 0.5).clamp(min=0)
    low = source.floor().clamp(max=size - 1)
    weight = (source - low).clamp(max=1).float()
    low = low.long()
    return low, (low + 1).clamp(max=size - 1), weight


class RegionBlocks:
    """Which regions of a batch run at full resolution (fine) and which at ``1/reduction``
    (coarse), for one forward; shared by every mixed level of that forward.

    Fine blocks come first, image after image, each image's in raster order; coarse blocks the
    same. ``slot[q]`` is region q's position among the blocks of its kind (q = b * R + raster
    index, R regions per image).

    Args:
        fine_mask (Tensor): (B, Hc, Wc) bool, True = fine (the backbone's decisions).
        ratio (int): token-grid cells per region side (S_c / S_f, 2 for 32/16).
        out_size (tuple): (rows, cols) of the token grid covering the unpadded input (the
            backbone's ``layout.out_size``); every level's valid extent follows from it.
        reduction (int): a coarse region runs at ``1/reduction`` of each level's resolution
            (a power of two).
        scales (Sequence[float]): the scale of every output level of the neck (relative to the
            token grid), so a head reading level i knows its resolution.
        fine_per_image (int, optional): the number of fine regions of EVERY image when shapes fix
            it (budget mode, forced scale): no host read, static shapes. None: read from the mask.
    """

    def __init__(self, fine_mask: torch.Tensor, ratio: int, out_size: Tuple[int, int],
                 reduction: int, scales: Sequence[float],
                 fine_per_image: Optional[int] = None) -> None:
        if fine_mask.dim() != 3 or fine_mask.dtype != torch.bool:
            raise ValueError('RegionBlocks: fine_mask must be a (B, Hc, Wc) bool tensor, got '
                             f'{fine_mask.dtype} {tuple(fine_mask.shape)}')
        if reduction < 2 or reduction & (reduction - 1):
            raise ValueError(f'RegionBlocks: reduction must be a power of two >= 2, got '
                             f'{reduction}')
        self.fine_mask = fine_mask
        self.ratio = int(ratio)
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.reduction = int(reduction)
        self.scales = tuple(float(s) for s in scales)
        batch, rows, cols = fine_mask.shape
        regions = rows * cols
        device = fine_mask.device
        self.batch, self.grid, self.num_regions = batch, (rows, cols), regions
        raster = torch.arange(regions, device=device)
        if fine_per_image is not None:
            count = int(fine_per_image)
            # keys are unique (coarse after fine, each in raster order): a plain sort is stable
            order = torch.argsort((~fine_mask).flatten(1).long() * regions + raster, dim=1)
            order = order + (torch.arange(batch, device=device) * regions)[:, None]
            self.fine_regions = order[:, :count].reshape(-1)
            self.coarse_regions = order[:, count:].reshape(-1)
            self.fine_count = torch.full((batch, ), count, dtype=torch.long, device=device)
        else:
            flat = fine_mask.reshape(-1)
            total = int(flat.sum())  # the one host read of threshold mode
            everything = torch.arange(batch * regions, device=device)
            order = torch.argsort((~flat).long() * (batch * regions) + everything)
            self.fine_regions, self.coarse_regions = order[:total], order[total:]
            self.fine_count = fine_mask.flatten(1).sum(1)
        self.coarse_count = regions - self.fine_count
        self.is_fine = fine_mask.reshape(-1)
        slot = torch.zeros(batch * regions, dtype=torch.long, device=device)
        slot = slot.scatter(0, self.fine_regions,
                            torch.arange(self.fine_regions.shape[0], device=device))
        self.slot = slot.scatter(0, self.coarse_regions,
                                 torch.arange(self.coarse_regions.shape[0], device=device))
        self._cache: Dict[tuple, torch.Tensor] = {}

    @property
    def num_fine(self) -> int:
        """Fine blocks in the batch."""
        return self.fine_regions.shape[0]

    @property
    def num_coarse(self) -> int:
        """Coarse blocks in the batch."""
        return self.coarse_regions.shape[0]

    def side(self, scale: float, kind: str) -> int:
        """Pixels per region side of a ``kind`` ('fine' / 'coarse') block at ``scale``."""
        pixels = self.ratio * scale / (self.reduction if kind == 'coarse' else 1)
        if pixels < 1 or pixels != int(pixels):
            raise ValueError(f'RegionBlocks: a {kind} region at scale {scale} would be '
                             f'{pixels} pixels wide (ratio {self.ratio}, reduction '
                             f'{self.reduction}); mixed levels need whole pixels')
        return int(pixels)

    def valid(self, scale: float, kind: str) -> Tuple[int, int]:
        """(rows, cols) of a level at ``scale`` that cover the unpadded input."""
        factor = scale / (self.reduction if kind == 'coarse' else 1)
        return (max(1, math.ceil(self.out_size[0] * factor)),
                max(1, math.ceil(self.out_size[1] * factor)))

    def _region_coords(self, kind: str):
        regions = self.fine_regions if kind == 'fine' else self.coarse_regions
        rows, cols = self.grid
        image = regions // self.num_regions
        inside = regions % self.num_regions
        return image, inside // cols, inside % cols

    def _pool_index(self, scale: float, reader: str, image: torch.Tensor, ys: torch.Tensor,
                    xs: torch.Tensor, zeros: bool) -> torch.Tensor:
        """Rows of a mixed map's pixel pool (:meth:`MixedScaleMap.pool`) that a ``reader``
        ('fine' / 'coarse') block sees at pixel (ys, xs) of its resolution at ``scale``: a
        pixel of its own kind as it is, a coarse neighbour's nearest pixel (fine reader), a fine
        neighbour's pooled pixel (coarse reader); outside the input the zero row (``zeros``) or
        the nearest border pixel."""
        fine_side, coarse_side = self.side(scale, 'fine'), self.side(scale, 'coarse')
        side = fine_side if reader == 'fine' else coarse_side
        valid_rows, valid_cols = self.valid(scale, reader)
        outside = (ys < 0) | (ys >= valid_rows) | (xs < 0) | (xs >= valid_cols)
        ys, xs = ys.clamp(0, valid_rows - 1), xs.clamp(0, valid_cols - 1)
        neighbour = image * self.num_regions + (ys // side) * self.grid[1] + xs // side
        py, px = ys % side, xs % side
        slot, fine = self.slot[neighbour], self.is_fine[neighbour]
        r = self.reduction
        coarse_start = self.num_fine * fine_side**2
        pooled_start = coarse_start + self.num_coarse * coarse_side**2
        if reader == 'fine':
            from_fine = slot * fine_side**2 + py * fine_side + px
            from_coarse = coarse_start + slot * coarse_side**2 + (py // r) * coarse_side + \
                px // r
        else:
            from_fine = pooled_start + slot * coarse_side**2 + py * coarse_side + px
            from_coarse = coarse_start + slot * coarse_side**2 + py * coarse_side + px
        index = torch.where(fine, from_fine, from_coarse)
        if zeros:
            zero_row = pooled_start + self.num_fine * coarse_side**2
            index = torch.where(outside, torch.full_like(index, zero_row), index)
        return index

    def tap_product_index(self, scale: float) -> torch.Tensor:
        """(pixels, 9): for every output pixel of a 3x3 convolution at ``scale`` (the fine
        blocks' pixels, then the coarse blocks', as a mixed map's rows) the rows of its nine tap
        products in a table of every pool row's products (:meth:`MixedScaleMap.pool`'s rows,
        nine taps each, row-major over the kernel): pool row * 9 + tap; zero outside the input.
        Cached per forward."""
        key = ('taps', scale)
        if key not in self._cache:
            rows = []
            for kind in ('fine', 'coarse'):  # every block's window: its pixels and a halo of 1
                side = self.side(scale, kind)
                image, row, col = self._region_coords(kind)
                offsets = torch.arange(-1, side + 1, device=self.fine_mask.device)
                windows = self._pool_index(scale, kind, image[:, None, None],
                                           row[:, None, None] * side + offsets[None, :, None],
                                           col[:, None, None] * side + offsets[None, None, :],
                                           zeros=True)
                rows.append(torch.stack([windows[:, dy:dy + side, dx:dx + side]
                                         for dy in range(3) for dx in range(3)], dim=-1))
            taps = torch.cat([r.reshape(-1, 9) for r in rows])
            self._cache[key] = taps * 9 + torch.arange(9, device=taps.device)
        return self._cache[key]

    def sample_points(self, scale: float, kind: str, target_side: int,
                      target_valid: Tuple[int, int]) -> Tuple[torch.Tensor, ...]:
        """Bilinear sampling (align_corners=False) of the ``kind`` resolution of a mixed map at
        ``scale`` onto a grid of ``target_side`` pixels per region side, ``target_valid`` pixels
        over the input, at every ``kind`` block: the pool rows of the four neighbours of each
        target pixel (:meth:`_pool_index`, border pixels repeated) and the weights along rows and
        columns. Cached per forward."""
        key = ('sample', scale, kind, target_side, tuple(target_valid))
        if key in self._cache:
            return self._cache[key]
        valid_rows, valid_cols = self.valid(scale, kind)
        image, row, col = self._region_coords(kind)
        y0, y1, wy = _bilinear_axis(row, target_side, valid_rows, target_valid[0])
        x0, x1, wx = _bilinear_axis(col, target_side, valid_cols, target_valid[1])
        image = image[:, None, None]

        def rows(ys, xs):
            return self._pool_index(scale, kind, image, ys[:, :, None], xs[:, None, :],
                                    zeros=False).reshape(-1)

        points = (rows(y0, x0), rows(y0, x1), rows(y1, x0), rows(y1, x1), wy, wx)
        self._cache[key] = points
        return points

    def dense_pixel_index(self, scale: float, kind: str) -> torch.Tensor:
        """(pixels,) for every pixel of every ``kind`` block at ``scale`` (block after block,
        row-major) its row in a dense map of this level's valid size, (B, H, W) flattened
        channels-last; pixels beyond the input read the nearest border pixel (what
        :meth:`_pool_index` gives a resampling). Cached per forward."""
        key = ('dense', scale, kind)
        if key not in self._cache:
            side = self.side(scale, kind)
            valid_rows, valid_cols = self.valid(scale, kind)
            image, row, col = self._region_coords(kind)
            steps = torch.arange(side, device=self.fine_mask.device)
            ys = (row[:, None] * side + steps).clamp(max=valid_rows - 1)
            xs = (col[:, None] * side + steps).clamp(max=valid_cols - 1)
            index = (image[:, None, None] * valid_rows + ys[:, :, None]) * valid_cols + \
                xs[:, None, :]
            self._cache[key] = index.reshape(-1)
        return self._cache[key]

    def pixel_image(self, scale: float) -> torch.Tensor:
        """(P,) the image of every pixel row of a mixed map at ``scale`` (cached)."""
        key = ('image', scale)
        if key not in self._cache:
            fine_image = self._region_coords('fine')[0]
            coarse_image = self._region_coords('coarse')[0]
            self._cache[key] = torch.cat([
                fine_image.repeat_interleave(self.side(scale, 'fine')**2),
                coarse_image.repeat_interleave(self.side(scale, 'coarse')**2)])
        return self._cache[key]


class MixedScaleMap:
    """One feature level whose fine regions are blocks at full resolution and whose coarse
    regions are blocks at ``1/reduction`` of it.

    Args:
        data (Tensor): (P, C) every pixel of every block, channels last: the fine blocks'
            (N_f * n * n, block after block, row-major), then the coarse blocks' (N_c * m * m),
            n and m the fine and coarse block sides at ``scale``.
        blocks (RegionBlocks): which region is which (shared by the levels of one forward).
        scale (float): the level's resolution relative to the token grid (4: 1/4 of the input
            for 16 px tokens).
    """
    __slots__ = ('data', 'blocks', 'scale')

    def __init__(self, data: torch.Tensor, blocks: RegionBlocks, scale: float) -> None:
        expected = blocks.num_fine * blocks.side(scale, 'fine')**2 + \
            blocks.num_coarse * blocks.side(scale, 'coarse')**2
        if data.dim() != 2 or data.shape[0] != expected:
            raise ValueError(f'MixedScaleMap: data must be (P, C) with P = {expected} pixels at '
                             f'scale {scale}, got {tuple(data.shape)}')
        self.data, self.blocks, self.scale = data, blocks, float(scale)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', str(func))
        raise TypeError(
            f'{name}() got a MixedScaleMap (a level whose coarse regions run at reduced '
            'resolution), not a tensor: the neck was built with coarse_reduction, so the decode '
            "head must read mixed levels: use dict(type='MixedScaleUPerHead') (it loads "
            "UPerHead's weights) or set the neck's coarse_reduction=None")

    @classmethod
    def from_blocks(cls, fine: torch.Tensor, coarse: torch.Tensor, blocks: RegionBlocks,
                    scale: float) -> 'MixedScaleMap':
        """From (N_f, n, n, C) fine and (N_c, m, m, C) coarse blocks (channels last)."""
        channels = fine.shape[-1]
        return cls(torch.cat([fine.reshape(-1, channels), coarse.reshape(-1, channels)]),
                   blocks, scale)

    @property
    def channels(self) -> int:
        return self.data.shape[1]

    def split(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N_f, n, n, C) fine and (N_c, m, m, C) coarse blocks (views of ``data``)."""
        n, m = self.blocks.side(self.scale, 'fine'), self.blocks.side(self.scale, 'coarse')
        split = self.blocks.num_fine * n * n
        return (self.data[:split].view(-1, n, n, self.channels),
                self.data[split:].view(-1, m, m, self.channels))

    def with_data(self, data: torch.Tensor) -> 'MixedScaleMap':
        return MixedScaleMap(data, self.blocks, self.scale)

    def pool(self) -> torch.Tensor:
        """The rows :meth:`RegionBlocks._pool_index` points into: every pixel, the fine blocks
        pooled to the coarse resolution, a zero row."""
        fine, _ = self.split()
        pooled = _pooled(fine, self.blocks.reduction).reshape(-1, self.channels)
        return torch.cat([self.data, pooled, self.data.new_zeros(1, self.channels)])

    def to_dense(self) -> torch.Tensor:
        """(B, C, H, W) at the fine resolution, cropped to the input: fine blocks as they are,
        coarse blocks bilinearly upsampled (with their halo, so no seams)."""
        blocks = self.blocks
        n = blocks.side(self.scale, 'fine')
        fine, _ = self.split()
        coarse = _bilinear(self.pool(), blocks.sample_points(
            self.scale, 'coarse', n, blocks.valid(self.scale, 'fine'))).view(-1, n, n,
                                                                             self.channels)
        every = torch.cat([fine, coarse])  # fine blocks first, then coarse: region q's block is
        position = torch.where(blocks.is_fine, blocks.slot, blocks.num_fine + blocks.slot)
        rows, cols = blocks.grid
        dense = every[position].view(blocks.batch, rows, cols, n, n, self.channels)
        dense = dense.permute(0, 5, 1, 3, 2, 4).reshape(blocks.batch, self.channels, rows * n,
                                                        cols * n)
        valid_rows, valid_cols = blocks.valid(self.scale, 'fine')
        return dense[:, :, :valid_rows, :valid_cols].contiguous()

    def __repr__(self) -> str:
        return (f'MixedScaleMap(scale={self.scale}, channels={self.channels}, fine blocks '
                f'{self.blocks.num_fine}, coarse blocks {self.blocks.num_coarse})')


Level = Union[torch.Tensor, MixedScaleMap]

# ----------------------------------------------------------------------------------- operations
def _pooled(fine: torch.Tensor, reduction: int) -> torch.Tensor:
    """(N, h / r, w / r, ...): each r x r group of dimensions 1 and 2 of ``fine`` (N, h, w, ...:
    fine blocks or a part of them, channels last) averaged, as a sum of r^2 strided views."""
    r = reduction
    return sum(fine[:, i::r, j::r] for i in range(r) for j in range(r)) * (1.0 / r**2)


def _bilinear(source: torch.Tensor, points: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(N * side * side, C) rows: the bilinear combination of the ``source`` rows (R, C) that
    ``points`` (four row indices per target pixel, row and column weights) name: along rows,
    then columns, as three fused linear interpolations (``torch.lerp``)."""
    i00, i01, i10, i11, wy, wx = points
    side, channels = wy.shape[1], source.shape[1]

    def take(index):
        return torch.index_select(source, 0, index).view(-1, side, side, channels)

    wy = wy[:, :, None, None].to(source.dtype)  # (rows in bf16 under autocast)
    wx = wx[:, None, :, None].to(source.dtype)
    top, bottom = torch.lerp(take(i00), take(i01), wx), torch.lerp(take(i10), take(i11), wx)
    return torch.lerp(top, bottom, wy).reshape(-1, channels)


def _from_dense(x: torch.Tensor, blocks: RegionBlocks, scale: float,
                kind: str) -> torch.Tensor:
    """Every ``kind`` block at ``scale`` of the dense map ``x`` (channels-last, so that the
    interpolated map's pixels are rows) bilinearly resampled to the level's valid size:
    (N * side * side, C) rows of ``F.interpolate(x, size=..., mode='bilinear',
    align_corners=False)``, whatever
    the ratio of sizes. The interpolation runs over the whole map, then one gather picks the
    blocks' pixels; it is not a multiply-add layer."""
    size = blocks.valid(scale, kind)
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
    rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return torch.index_select(rows, 0, blocks.dense_pixel_index(scale, kind))


def resample(x: Level, scale: float, like: Level) -> Level:
    """``x`` (a level at ``scale``) bilinearly resampled like ``like``: to a dense tensor's size
    with ``F.interpolate`` (as UPerHead does), or into a mixed level's blocks and resolution
    (:func:`resample_into`)."""
    if isinstance(like, MixedScaleMap):
        return resample_into(x, scale, like.blocks, like.scale)
    if isinstance(x, MixedScaleMap):
        raise TypeError('resample: a mixed level cannot be resampled into a dense one; '
                        'MixedScaleMap.to_dense() gives its dense map')
    return F.interpolate(x, size=like.shape[2:], mode='bilinear', align_corners=False)


def resample_into(x: Level, scale: float, blocks: RegionBlocks,
                  target: float) -> MixedScaleMap:
    """``x`` (a level at ``scale``) bilinearly resampled (align_corners=False, as mmseg's
    ``resize``) into ``blocks`` at the resolution ``target``. A dense ``x`` is resampled to the
    level's valid size (coarse blocks: 1/reduction of it), exactly as ``F.interpolate(size=...)``
    at those pixels. A mixed ``x``: each kind of block reads its own kind with a one-pixel halo
    (border pixels repeated at the input's border) when upsampling, its region only when
    downsampling by two."""
    if isinstance(x, MixedScaleMap) and x.blocks is not blocks:
        raise ValueError('resample: the two mixed levels come from different forwards')
    if isinstance(x, MixedScaleMap) and target == scale:
        return x
    if not isinstance(x, MixedScaleMap):  # a dense map: to the level's size, as mmseg resizes
        x = x.contiguous(memory_format=torch.channels_last)
        out = [_from_dense(x, blocks, target, kind) for kind in ('fine', 'coarse')]
        return MixedScaleMap(torch.cat(out), blocks, target)
    pool = x.pool()  # each kind of block reads its own kind (the same factor)
    out = [_bilinear(pool, blocks.sample_points(scale, kind, blocks.side(target, kind),
                                                blocks.valid(target, kind)))
           for kind in ('fine', 'coarse')]
    return MixedScaleMap(torch.cat(out), blocks, target)


def add(a: Level, b: Level) -> Level:
    if isinstance(a, MixedScaleMap):
        return a.with_data(a.data + b.data)
    return a + b


def cat(levels: Sequence[Level]) -> Level:
    """Concatenate along channels (levels of the same blocks and scale)."""
    if isinstance(levels[0], MixedScaleMap):
        return levels[0].with_data(torch.cat([level.data for level in levels], dim=1))
    return torch.cat(list(levels), dim=1)


def _check_conv(conv: nn.Conv2d) -> None:
    """Refuse a convolution a mixed level cannot run."""
    kernel = conv.kernel_size
    if kernel not in ((1, 1), (3, 3)) or conv.stride != (1, 1) or conv.dilation != (1, 1) or \
            conv.padding != (kernel[0] // 2, kernel[1] // 2) or conv.padding_mode != 'zeros' \
            or conv.groups != 1:
        raise ValueError('mixed-scale levels run 1x1 and 3x3 convolutions of stride 1, dilation '
                         '1, one group and "same" zero padding; got kernel_size='
                         f'{kernel}, stride={conv.stride}, dilation={conv.dilation}, groups='
                         f'{conv.groups}, padding={conv.padding}, '
                         f'padding_mode={conv.padding_mode!r}')


def _conv(conv: nn.Conv2d, x: MixedScaleMap) -> MixedScaleMap:
    """A convolution of a mixed level: a pointwise one is a linear map of every pixel, a 3x3 one
    reads every block's neighbours (:func:`_conv_by_tap_products`)."""
    _check_conv(conv)
    if conv.kernel_size == (1, 1):
        return x.with_data(F.linear(x.data, conv.weight.flatten(1), conv.bias))
    return _conv_by_tap_products(conv, x)


#: output channels of a 3x3 kernel multiplied at a time by :func:`_conv_by_tap_products` (nine
#: products per channel and pixel are kept until summed)
TAP_PRODUCT_CHANNELS = 64


def _pool_where_read(pooled: torch.Tensor, fine: torch.Tensor, reduction: int) -> None:
    """Write into ``pooled`` (N, m, m, 9, c) the fine blocks' tap products (N, n, n, 9, c)
    averaged ``reduction`` x ``reduction`` where a coarse neighbour can read them: a coarse
    block only touches a fine block's border ring, from outside, so the top row is read through
    the taps of the kernel's bottom row (6-8), the bottom row through its top row (0-2), the left
    column through its right column (2, 5, 8), the right column through its left one (0, 3, 6).
    The other slots are never read and are left as they are (a third of the work at m = 4)."""
    r, m = reduction, pooled.shape[1]
    last = (m - 1) * r  # the first fine row (column) of the last pooled one
    pooled[:, :1, :, 6:9] = _pooled(fine[:, :r, :, 6:9], r)
    pooled[:, m - 1:, :, 0:3] = _pooled(fine[:, last:, :, 0:3], r)
    pooled[:, :, :1, 2::3] = _pooled(fine[:, :, :r, 2::3], r)
    pooled[:, :, m - 1:, 0::3] = _pooled(fine[:, :, last:, 0::3], r)


def _conv_by_tap_products(conv: nn.Conv2d, x: MixedScaleMap) -> MixedScaleMap:
    """A 3x3 convolution of a mixed level from the output side, :data:`TAP_PRODUCT_CHANNELS`
    output channels at a time: a matrix product multiplies every pixel of the level by all nine
    taps of the kernel (the level's own rows: no windows, no halo copies); the fine blocks'
    products are averaged ``reduction`` x ``reduction`` where a coarse neighbour reads them
    (:func:`_pool_where_read`; the product of the pooled pixel, the product being linear); an
    ``embedding_bag`` sums every output pixel's nine tap products from its taps' sources
    (:meth:`RegionBlocks.tap_product_index`; zero outside the input). Every pixel's products
    are computed once, so the multiply-adds are those counted (nine taps per output pixel);
    per-layer timings: docs/benchmarks.md."""
    blocks, data = x.blocks, x.data
    pixels = data.shape[0]
    r = blocks.reduction
    n, m = blocks.side(x.scale, 'fine'), blocks.side(x.scale, 'coarse')
    fine_rows, pooled_rows = blocks.num_fine * n * n, blocks.num_fine * m * m
    taps = blocks.tap_product_index(x.scale)
    device = data.device.type  # a product into a given tensor is not autocast: cast as it would
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) and \
        data.dtype != torch.float64 else data.dtype
    groups, grad = conv.weight.split(TAP_PRODUCT_CHANNELS), torch.is_grad_enabled()
    if not grad:  # one table for every group of channels, written in place: the pooled rows and
        # the zero row follow the products without a copy, and the memory is touched once
        data, rows = data.to(dtype), pixels + pooled_rows + 1
        scratch = data.new_empty(rows * 9 * groups[0].shape[0])
    out = []
    for group in groups:  # (c, C_in, 3, 3) -> (C_in, 9 c): column t * c + o = tap t of channel o
        weight = group.flatten(1).t().reshape(conv.in_channels, -1)
        width, channels = weight.shape[1], group.shape[0]
        if grad:
            products = data @ weight
            pooled = products.new_zeros(blocks.num_fine, m, m, 9, channels)
        else:
            table = scratch[:rows * width].view(rows, width)
            products = torch.mm(data, weight.to(dtype), out=table[:pixels])
            pooled = table[pixels:pixels + pooled_rows].view(-1, m, m, 9, channels)
        _pool_where_read(pooled, products[:fine_rows].view(-1, n, n, 9, channels), r)
        if grad:
            table = torch.cat([products, pooled.reshape(-1, width),
                               products.new_zeros(1, width)])
        else:
            table[-1].zero_()
        out.append(F.embedding_bag(taps, table.view(-1, channels), mode='sum'))
    out = out[0] if len(out) == 1 else torch.cat(out, dim=1)
    return x.with_data(out if conv.bias is None else out + conv.bias.to(out.dtype))


def _batch_norm(norm: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """A BatchNorm on (P, C) rows: every row one sample of the statistics (as every pixel of a
    dense map is)."""
    if not isinstance(norm, _BatchNorm):
        raise ValueError('mixed-scale levels support BatchNorm (and SyncBN) in ConvModules, got '
                         f'{type(norm).__name__}')
    pixels, channels = rows.shape
    return norm(rows.reshape(pixels, channels, 1, 1)).reshape(pixels, channels)


def conv_module(module: nn.Module, x: Level) -> Level:
    """mmcv's ``ConvModule`` (conv, norm, activation in its ``order``) on a level: as it is on
    a tensor, block by block on a :class:`MixedScaleMap` (the same weights)."""
    if not isinstance(x, MixedScaleMap):
        return module(x)
    if getattr(module, 'with_explicit_padding', False):
        raise ValueError('mixed-scale levels do not support ConvModule explicit padding layers')
    for layer in module.order:
        if layer == 'conv':
            x = _conv(module.conv, x)
        elif layer == 'norm' and module.with_norm:
            x = x.with_data(_batch_norm(module.norm, x.data))
        elif layer == 'act' and module.with_activation:
            x = x.with_data(module.activate(x.data))
    return x


def classify(head: nn.Module, x: Level) -> Level:
    """A decode head's ``cls_seg`` (channel dropout, then the 1x1 classifier) on a level; on a
    mixed one the dropout draws one mask per image and channel, as ``Dropout2d`` does on the
    dense map."""
    if not isinstance(x, MixedScaleMap):
        return head.cls_seg(x)
    data = x.data
    if head.dropout is not None and head.training and head.dropout.p > 0:
        keep = head.dropout(data.new_ones(x.blocks.batch, data.shape[1], 1, 1))
        data = data * keep.flatten(1)[x.blocks.pixel_image(x.scale)]
    return _conv(head.conv_seg, x.with_data(data))


# ----------------------------------------------------------------------------------- counting
def pixels_per_image(x: Level, batch: Optional[int] = None) -> torch.Tensor:
    """(B,) float64 output pixels of a level per image: what a layer on it computes."""
    if isinstance(x, MixedScaleMap):
        blocks = x.blocks
        return (blocks.fine_count * blocks.side(x.scale, 'fine')**2 +
                blocks.coarse_count * blocks.side(x.scale, 'coarse')**2).double()
    return torch.full((x.shape[0] if batch is None else batch, ), float(x.shape[2] * x.shape[3]),
                      dtype=torch.float64, device=x.device)


def conv_module_macs(module: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Multiply-adds of a ConvModule's (or a Conv2d's) convolution over ``pixels`` outputs."""
    conv = getattr(module, 'conv', module)
    per_pixel = conv.in_channels // conv.groups * conv.out_channels * \
        conv.kernel_size[0] * conv.kernel_size[1]
    return pixels * float(per_pixel)

