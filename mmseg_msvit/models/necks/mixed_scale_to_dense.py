"""Neck: mixed-scale token outputs -> dense NCHW feature maps for mmseg decode heads, or, with
``coarse_reduction``, levels whose coarse regions run at reduced resolution."""
import copy
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmseg.models.necks import MultiLevelNeck
from mmseg.models.utils import resize
from mmseg.registry import MODELS

from ..features import MixedScaleFeatures, MixedScaleMaps, layout_of
from ..mixed_maps import (MixedScaleMap, RegionBlocks, conv_module, conv_module_macs,
                          pixels_per_image, resample_into)


class MixedScaleMultiLevelNeck(MultiLevelNeck):
    """mmseg's :class:`MultiLevelNeck` (same parameters, same names) whose levels finer than the
    token grid (scale > 1) can run region by region: given :class:`~mmseg_msvit.models.
    mixed_maps.RegionBlocks`, such a level is a :class:`~mmseg_msvit.models.mixed_maps.
    MixedScaleMap` (fine regions at the level's resolution, coarse ones at ``1/reduction`` of
    it), made by resampling the lateral map straight into the blocks; the other levels stay
    dense tensors. Without blocks it is exactly mmseg's neck."""

    def forward(self, inputs, blocks: Optional[RegionBlocks] = None,
                mixed_scales: Optional[Sequence[float]] = None):
        """``mixed_scales``: the levels that run region by region (default: every level finer
        than the token grid)."""
        if blocks is None:
            return super().forward(inputs)
        if mixed_scales is None:
            mixed_scales = [s for s in self.scales if s > 1]
        assert len(inputs) == len(self.in_channels)
        inputs = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        if len(inputs) == 1:
            inputs = [inputs[0] for _ in range(self.num_outs)]
        outs = []
        for i, scale in enumerate(self.scales):
            if scale in mixed_scales:  # finer than the token grid: region by region
                x = resample_into(inputs[i], 1.0, blocks, scale)
            else:
                x = resize(inputs[i], scale_factor=scale, mode='bilinear')
            outs.append(conv_module(self.convs[i], x))
        return tuple(outs)

    def macs(self, inputs_shape, outputs) -> torch.Tensor:
        """(B,) multiply-adds per image of one forward: the lateral convolutions on the
        ``inputs_shape`` (H, W) token-grid maps, each level's convolution on the pixels it
        computed (``outputs``: this neck's outputs)."""
        batch = outputs[0].blocks.batch if isinstance(outputs[0], MixedScaleMap) else \
            outputs[0].shape[0]
        grid = torch.full((batch, ), float(inputs_shape[0] * inputs_shape[1]),
                          dtype=torch.float64, device=_device(outputs[0]))
        total = sum(conv_module_macs(conv, grid) for conv in self.lateral_convs)
        for conv, out in zip(self.convs, outputs):
            total = total + conv_module_macs(conv, pixels_per_image(out, batch))
        return total


def _device(level) -> torch.device:
    return level.data.device if isinstance(level, MixedScaleMap) else level.device


@MODELS.register_module()
class MixedScaleToDense(nn.Module):
    """Rebuild dense maps from :class:`MixedScaleFeatures`, optionally resized per level.

    Every tap is scattered back to the fine grid (each fine token on its own cell, each coarse
    token copied to its 2x2 cells), giving (B, D, H/16, W/16). With ``scales`` given, the maps then
    go through mmseg's :class:`MultiLevelNeck` (1x1 lateral conv, resize by each scale, 3x3 conv),
    e.g. ``scales=[4, 2, 1, 0.5]`` for UPerNet as in mmseg's ViT-UPerNet configs.

    With ``coarse_unpool=True`` (our option) a coarse token is not only copied to its cells:
    each cell adds its own learned linear function of the token (one ``Linear(D, r^2 D)`` per tap,
    r = S_c / S_f, weights and bias starting at ZERO, so the output is unchanged until it is
    trained), so a coarse token that carries its region's detail (``MSViT(coarse_detail=True)``)
    can give its cells different features. It is computed for every region of the map and kept
    on the coarse ones; :meth:`unpool_macs` gives its multiply-adds per image.

    Args:
        in_channels (int | Sequence[int], optional): channels of each tap (required with
            ``scales`` or ``coarse_unpool``).
        out_channels (int, optional): channels of every output level (required with ``scales``).
        scales (Sequence[float], optional): resize factors, one per output level. Default: None
            (the dense maps are returned as they are).
        norm_cfg (dict, optional), act_cfg (dict, optional): for the MultiLevelNeck convs.
        coarse_unpool (bool): the learned per-cell features of coarse tokens. Default: False.
        num_taps (int, optional): with ``coarse_unpool`` and an int ``in_channels``: how many
            taps (default: ``len(scales)``, else 1).
        ratio (int): S_c / S_f, with ``coarse_unpool``. Default: 2.
        coarse_reduction (int, optional): our option, with ``scales``: the levels finer than the
            token grid (scale > 1) run region by region, fine regions at the level's resolution
            and coarse ones at ``1/coarse_reduction`` of it (2 or 4), as
            :class:`~mmseg_msvit.models.mixed_maps.MixedScaleMap` outputs that carry the
            backbone's decisions to the decode head (which must read them:
            ``MixedScaleUPerHead``). With every region fine the outputs are the dense ones.
            None: every level dense. Default: None.
        decode_regions (str): with ``coarse_reduction``: 'tokens' (a region runs fine where its
            tokens are fine) or 'coarse' (every region at reduced resolution whatever the
            tokens: the cheaper-head baseline). Default: 'tokens'.
        mixed_scales (Sequence[float], optional): with ``coarse_reduction``: which of ``scales``
            run region by region (each > 1); the others stay dense. None: every scale > 1.
            Default: None.

    The levels are :attr:`multi_level`, mmseg's ``MultiLevelNeck`` (None without ``scales``).
    Its weights load as they are: mmseg's keys (``lateral_convs.*``, ``convs.*``), and this
    neck's older ``rescale.*``, are read as ``multi_level.*`` (a ``load_state_dict`` pre-hook).
    """

    def __init__(self,
                 in_channels: Optional[Union[int, Sequence[int]]] = None,
                 out_channels: Optional[int] = None,
                 scales: Optional[Sequence[float]] = None,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 coarse_unpool: bool = False,
                 num_taps: Optional[int] = None,
                 ratio: int = 2,
                 coarse_reduction: Optional[int] = None,
                 decode_regions: str = 'tokens',
                 mixed_scales: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.scales = None if scales is None else list(scales)
        if not isinstance(coarse_unpool, bool):
            raise ValueError(f'MixedScaleToDense: coarse_unpool must be True or False, got '
                             f'{coarse_unpool!r}')
        if coarse_reduction is not None and (isinstance(coarse_reduction, bool) or
                                             coarse_reduction not in (2, 4)):
            raise ValueError('MixedScaleToDense: coarse_reduction must be None, 2 or 4 (coarse '
                             f'regions at 1/2 or 1/4 of each level\'s resolution), got '
                             f'{coarse_reduction!r}')
        if coarse_reduction is not None and self.scales is None:
            raise ValueError('MixedScaleToDense: coarse_reduction needs scales (the levels '
                             'finer than the token grid are the ones it reduces)')
        if decode_regions not in ('tokens', 'coarse'):
            raise ValueError("MixedScaleToDense: decode_regions must be 'tokens' or 'coarse', "
                             f'got {decode_regions!r}')
        if mixed_scales is not None and (
                self.scales is None or not all(isinstance(v, (int, float)) and v > 1 and
                                               v in self.scales for v in mixed_scales)):
            raise ValueError(f'MixedScaleToDense: mixed_scales must be scales > 1 among scales '
                             f'{self.scales}, got {mixed_scales!r}')
        self.coarse_reduction = coarse_reduction
        self.decode_regions = decode_regions
        self.mixed_scales = None if mixed_scales is None else [float(v) for v in mixed_scales]
        self.ratio = ratio
        self.unpool = None
        if coarse_unpool:
            if in_channels is None:
                raise ValueError('MixedScaleToDense: coarse_unpool needs in_channels (the width '
                                 'of every tap)')
            taps = list(in_channels) if not isinstance(in_channels, int) else \
                [in_channels] * (num_taps or (len(self.scales) if self.scales else 1))
            self.unpool = nn.ModuleList(nn.Linear(c, ratio * ratio * c) for c in taps)
            for layer in self.unpool:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if self.scales is not None:
            if in_channels is None or out_channels is None:
                raise ValueError('MixedScaleToDense: scales needs in_channels and out_channels, '
                                 f'got in_channels={in_channels}, out_channels={out_channels}')
            if isinstance(in_channels, int):
                in_channels = [in_channels] * len(self.scales)
            self.multi_level = MixedScaleMultiLevelNeck(list(in_channels), out_channels,
                                                    self.scales, norm_cfg=norm_cfg,
                                                    act_cfg=act_cfg)
        else:
            self.multi_level = None
        self._register_load_state_dict_pre_hook(self._mmseg_neck_keys)

    @staticmethod
    def _mmseg_neck_keys(state_dict, prefix, *args) -> None:
        """mmseg's MultiLevelNeck keys (``neck.lateral_convs.*``, ``neck.convs.*``) and the
        older ``neck.rescale.*`` read as this neck's ``multi_level.*``
        (:func:`~mmseg_msvit.models.checkpoints.mmseg_neck_key`)."""
        from ..checkpoints import mmseg_neck_key, rename_keys
        rename_keys(state_dict, prefix, mmseg_neck_key)

    def init_weights(self) -> None:
        if self.multi_level is not None:
            self.multi_level.init_weights()

    def unpool_macs(self, layout) -> int:
        """Multiply-adds of ``coarse_unpool`` for one image of ``layout`` (0 without it); it runs
        on every region, so it depends on the input size only."""
        if self.unpool is None:
            return 0
        return layout.num_regions * sum(m.in_features * m.out_features for m in self.unpool)

    def _unpooled(self, dense: torch.Tensor, layout, index: int) -> torch.Tensor:
        """``dense`` (cropped to the input) plus each coarse cell's learned feature."""
        ratio = self.ratio
        rows, cols = layout.fine_grid
        if rows != ratio * layout.fine_mask.shape[1]:
            raise ValueError(f'MixedScaleToDense: coarse_unpool was built for ratio={ratio} (coarse '
                             f'/ fine patch size) but the backbone has '
                             f'{rows // layout.fine_mask.shape[1]}; set the neck\'s ratio to it')
        out_rows, out_cols = dense.shape[-2:]
        # each region's first cell (inside the crop: the crop covers every region), which for a
        # coarse region is its coarse token: (B, Hc, Wc, D)
        tokens = dense[:, :, ::ratio, ::ratio].permute(0, 2, 3, 1)
        batch, region_rows, region_cols, dims = tokens.shape
        extra = self.unpool[index](tokens).view(batch, region_rows, region_cols, ratio, ratio,
                                                dims)
        extra = extra.permute(0, 5, 1, 3, 2, 4).reshape(batch, dims, rows, cols)
        coarse = (~layout.fine_mask).repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)
        extra = extra * coarse[:, None].to(extra.dtype)
        return dense + extra[:, :, :out_rows, :out_cols]

    def dense_copy(self) -> 'MixedScaleToDense':
        """A copy for a dense model (the distillation teacher): no coarse-token unpooling (there
        are no coarse tokens) and every level decoded densely."""
        dense = copy.deepcopy(self, {id(self.unpool): None})  # the copy's unpool: None
        dense.coarse_reduction = None
        return dense

    def dense_maps(self, inputs: Sequence[MixedScaleFeatures]) -> List[torch.Tensor]:
        """Every tap as a (B, D, H/16, W/16) map, before the multi-level neck."""
        dense = []
        for index, features in enumerate(inputs):
            if isinstance(inputs, MixedScaleMaps):  # MSViT(out_type='featmap'): already maps
                maps, layout = features, inputs.layout
            elif isinstance(features, MixedScaleFeatures):
                maps, layout = features.to_dense(), features.layout
            else:
                raise TypeError(f'MixedScaleToDense: input {index} is a '
                                f'{type(features).__name__}, expected MixedScaleFeatures or '
                                'MixedScaleMaps (the output of the MSViT backbone)')
            if self.unpool is not None:
                if index >= len(self.unpool):
                    raise ValueError(f'MixedScaleToDense: {len(inputs)} taps, but coarse_unpool '
                                     f'was built for {len(self.unpool)} (in_channels/num_taps)')
                maps = self._unpooled(maps, layout, index)
            dense.append(maps)
        return dense

    def maps_and_outputs(self, inputs):
        """(the dense maps of :meth:`dense_maps`, the neck's outputs): the maps are what
        distillation compares, the outputs what the decode head reads (with
        ``coarse_reduction``, :class:`~mmseg_msvit.models.mixed_maps.MixedScaleMap` for the
        levels finer than the token grid)."""
        dense = self.dense_maps(inputs)
        if self.multi_level is None:
            return dense, dense
        return dense, list(self.multi_level(dense, self.region_blocks(layout_of(inputs)),
                                        self.mixed_scales))

    def region_blocks(self, layout) -> Optional[RegionBlocks]:
        """The blocks of this forward (None: every level dense, as without
        ``coarse_reduction``, or as with it when every region is fine)."""
        if self.coarse_reduction is None:
            return None
        fine_mask, static = layout.fine_mask, layout.static_fine_regions
        if self.decode_regions == 'coarse':
            fine_mask, static = torch.zeros_like(fine_mask), 0
        elif static == layout.num_regions:
            return None  # every region fine (the dense ViT): the dense levels, same numbers
        ratio = layout.fine_grid[0] // fine_mask.shape[1]
        return RegionBlocks(fine_mask, ratio, layout.out_size, self.coarse_reduction,
                            self.scales, static)

    def macs(self, layout, outputs) -> torch.Tensor:
        """(B,) multiply-adds per image of this neck for a forward of ``layout`` (``outputs``:
        this neck's outputs): the coarse unpooling (:meth:`unpool_macs`) and the multi-level
        convolutions, as they ran (the blocks at each resolution)."""
        unpool = torch.full((layout.fine_mask.shape[0], ), float(self.unpool_macs(layout)),
                            dtype=torch.float64, device=layout.fine_mask.device)
        if self.multi_level is None:
            return unpool
        return unpool + self.multi_level.macs(layout.out_size, outputs)

    def forward(self, inputs: Sequence[MixedScaleFeatures]) -> List[torch.Tensor]:
        return self.maps_and_outputs(inputs)[1]
