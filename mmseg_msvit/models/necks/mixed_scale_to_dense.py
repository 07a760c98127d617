"""Neck: mixed-scale token outputs -> dense NCHW feature maps for mmseg decode heads."""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.necks import MultiLevelNeck
from mmseg.registry import MODELS

from ..features import MixedScaleFeatures


@MODELS.register_module()
class MixedScaleToDense(nn.Module):
    """Rebuild dense maps from :class:`MixedScaleFeatures`, optionally rescaled per level.

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
        scales (Sequence[float], optional): rescale factors, one per output level. Default: None
            (the dense maps are returned as they are).
        norm_cfg (dict, optional), act_cfg (dict, optional): for the MultiLevelNeck convs.
        coarse_unpool (bool): the learned per-cell features of coarse tokens. Default: False.
        num_taps (int, optional): with ``coarse_unpool`` and an int ``in_channels``: how many
            taps (default: ``len(scales)``, else 1).
        ratio (int): S_c / S_f, with ``coarse_unpool``. Default: 2.
    """

    def __init__(self,
                 in_channels: Optional[Union[int, Sequence[int]]] = None,
                 out_channels: Optional[int] = None,
                 scales: Optional[Sequence[float]] = None,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 coarse_unpool: bool = False,
                 num_taps: Optional[int] = None,
                 ratio: int = 2) -> None:
        super().__init__()
        self.scales = None if scales is None else list(scales)
        if not isinstance(coarse_unpool, bool):
            raise ValueError(f'MixedScaleToDense: coarse_unpool must be True or False, got '
                             f'{coarse_unpool!r}')
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
            self.rescale = MultiLevelNeck(list(in_channels), out_channels, self.scales,
                                          norm_cfg=norm_cfg, act_cfg=act_cfg)
        else:
            self.rescale = None

    def init_weights(self) -> None:
        if self.rescale is not None:
            self.rescale.init_weights()

    def unpool_macs(self, layout) -> int:
        """Multiply-adds of ``coarse_unpool`` for one image of ``layout`` (0 without it)."""
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
        full = F.pad(dense, (0, cols - out_cols, 0, rows - out_rows))
        tokens = full[:, :, ::ratio, ::ratio].permute(0, 2, 3, 1)  # (B, Hc, Wc, D): each
        # region's first cell, which for a coarse region is its coarse token
        batch, region_rows, region_cols, dims = tokens.shape
        extra = self.unpool[index](tokens).view(batch, region_rows, region_cols, ratio, ratio,
                                                dims)
        extra = extra.permute(0, 5, 1, 3, 2, 4).reshape(batch, dims, rows, cols)
        coarse = (~layout.fine_mask).repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)
        full = full + extra * coarse[:, None].to(extra.dtype)
        return full[:, :, :out_rows, :out_cols]

    def dense_maps(self, inputs: Sequence[MixedScaleFeatures]) -> List[torch.Tensor]:
        """Every tap as a (B, D, H/16, W/16) map, before the rescale."""
        dense = []
        for index, features in enumerate(inputs):
            if not isinstance(features, MixedScaleFeatures):
                raise TypeError(f'MixedScaleToDense: input {index} is a '
                                f'{type(features).__name__}, expected MixedScaleFeatures (the '
                                'output of the MSViT backbone)')
            maps = features.to_dense()
            if self.unpool is not None:
                if index >= len(self.unpool):
                    raise ValueError(f'MixedScaleToDense: {len(inputs)} taps, but coarse_unpool '
                                     f'was built for {len(self.unpool)} (in_channels/num_taps)')
                maps = self._unpooled(maps, features.layout, index)
            dense.append(maps)
        return dense

    def maps_and_outputs(self, inputs: Sequence[MixedScaleFeatures]):
        """(the dense maps of :meth:`dense_maps`, the neck's outputs): the maps are what
        distillation compares, the outputs what the decode head reads."""
        dense = self.dense_maps(inputs)
        return dense, (list(self.rescale(dense)) if self.rescale is not None else dense)

    def forward(self, inputs: Sequence[MixedScaleFeatures]) -> List[torch.Tensor]:
        return self.maps_and_outputs(inputs)[1]
