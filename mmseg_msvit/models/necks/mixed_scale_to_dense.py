"""Neck: mixed-scale token outputs -> dense NCHW feature maps for mmseg decode heads."""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn
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

    Args:
        in_channels (int | Sequence[int], optional): channels of each tap (required with
            ``scales``).
        out_channels (int, optional): channels of every output level (required with ``scales``).
        scales (Sequence[float], optional): rescale factors, one per output level. Default: None
            (the dense maps are returned as they are).
        norm_cfg (dict, optional), act_cfg (dict, optional): for the MultiLevelNeck convs.
    """

    def __init__(self,
                 in_channels: Optional[Union[int, Sequence[int]]] = None,
                 out_channels: Optional[int] = None,
                 scales: Optional[Sequence[float]] = None,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.scales = None if scales is None else list(scales)
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

    def forward(self, inputs: Sequence[MixedScaleFeatures]) -> List[torch.Tensor]:
        dense = []
        for index, features in enumerate(inputs):
            if not isinstance(features, MixedScaleFeatures):
                raise TypeError(f'MixedScaleToDense: input {index} is a '
                                f'{type(features).__name__}, expected MixedScaleFeatures (the '
                                'output of the MSViT backbone)')
            dense.append(features.to_dense())
        if self.rescale is not None:
            return list(self.rescale(dense))
        return dense
