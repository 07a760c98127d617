"""UPerHead whose finer levels spend their compute where the tokens are fine."""
from typing import List

import torch
from mmseg.models.decode_heads import UPerHead
from mmseg.registry import MODELS

from ..mixed_maps import (Level, MixedScaleMap, add, cat, classify, conv_module,
                          conv_module_macs, pixels_per_image, resample)


@MODELS.register_module()
class MixedScaleUPerHead(UPerHead):
    """mmseg's :class:`UPerHead` (the same parameters under the same names: its checkpoints load
    unchanged) that reads the mixed levels of ``MixedScaleToDense(coarse_reduction=...)``.

    On a :class:`~mmseg_msvit.models.mixed_maps.MixedScaleMap` level (fine regions at the level's
    resolution, coarse ones at ``1/reduction``) every layer runs block by block: the laterals,
    the top-down path (each level resampled into the blocks of the next finer one), the FPN
    convolutions, the bottleneck over the four levels resampled to the finest, and the
    classifier; then the logits are made dense (coarse blocks upsampled with their halo) at the
    finest level's resolution, as UPerHead returns them. The PSP module on the coarsest level and
    every dense level run as in UPerHead. With every region fine this is UPerHead; with every
    region coarse it is UPerHead on the maps at ``1/reduction`` resolution (upsampled by
    ``reduction`` at the end). Given dense tensors only, it IS UPerHead.

    Args: as :class:`UPerHead` (``align_corners`` must be False on mixed levels: the blocks
    resample as mmseg's ``resize`` with align_corners=False).
    """

    def forward(self, inputs):
        feats = self._forward_mixed(inputs)
        if not isinstance(feats, MixedScaleMap):
            return self.cls_seg(feats)
        return classify(self, feats).to_dense()

    def _scales(self, inputs) -> List[float]:
        """The scale of every input the head reads (relative to the token grid)."""
        blocks = next(x.blocks for x in inputs if isinstance(x, MixedScaleMap))
        if len(blocks.scales) <= max(self.in_index):
            raise ValueError(f'MixedScaleUPerHead: in_index {self.in_index} reads levels the '
                             f'neck does not have (scales {list(blocks.scales)})')
        return [blocks.scales[i] for i in self.in_index]

    def _forward_mixed(self, inputs) -> Level:
        """UPerHead's ``_forward_feature`` on levels that may be mixed."""
        selected = self._transform_inputs(inputs)
        if not any(isinstance(x, MixedScaleMap) for x in selected):
            return self._forward_feature(inputs)
        if self.align_corners:
            raise ValueError('MixedScaleUPerHead: align_corners=True is not supported on mixed '
                             'levels (they resample with align_corners=False)')
        scales = self._scales(inputs)
        laterals = [conv_module(conv, selected[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(selected))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = add(laterals[i - 1],
                                  resample(laterals[i], scales[i], laterals[i - 1]))
        fpn_outs = [conv_module(self.fpn_convs[i], laterals[i])
                    for i in range(len(laterals) - 1)]
        fpn_outs.append(laterals[-1])
        fpn_outs = [fpn_outs[0]] + [resample(x, scales[i + 1], fpn_outs[0])
                                    for i, x in enumerate(fpn_outs[1:])]
        return conv_module(self.fpn_bottleneck, cat(fpn_outs))

    def macs(self, inputs) -> torch.Tensor:
        """(B,) multiply-adds per image of one forward on ``inputs`` (the neck's outputs):
        every convolution over the pixels it computes (mixed levels: fine blocks at full, coarse
        ones at reduced resolution, halos read but not computed); the PSP's pooled branches at
        their pooled sizes."""
        selected = self._transform_inputs(inputs)
        batch = next((x.blocks.batch for x in selected if isinstance(x, MixedScaleMap)),
                     selected[0].shape[0] if not isinstance(selected[0], MixedScaleMap) else 0)
        pixels = [pixels_per_image(x, batch) for x in selected]
        total = sum(conv_module_macs(conv, pixels[i])
                    for i, conv in enumerate(self.lateral_convs))
        total = total + sum(conv_module_macs(conv, pixels[i])
                            for i, conv in enumerate(self.fpn_convs))
        for stage in self.psp_modules:  # AdaptiveAvgPool2d(s), then a 1x1 ConvModule
            size = stage[0].output_size
            size = (size, size) if isinstance(size, int) else size
            total = total + conv_module_macs(stage[1], torch.full_like(pixels[-1],
                                                                       size[0] * size[1]))
        total = total + conv_module_macs(self.bottleneck, pixels[-1])
        total = total + conv_module_macs(self.fpn_bottleneck, pixels[0])
        return total + conv_module_macs(self.conv_seg, pixels[0])
