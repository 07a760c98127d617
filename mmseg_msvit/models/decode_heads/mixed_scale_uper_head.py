"""UPerHead whose finer levels spend their compute where the tokens are fine."""
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
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
    resample as mmseg's ``resize`` with align_corners=False), and
        coarse_upsample (int, optional): our option: the neck's ``coarse_reduction`` r; the
            coarse blocks' final features are brought to the full resolution by bilinear
            upsampling PLUS a learned sub-pixel term (a 1x1 convolution to r^2 x channels,
            rearranged to r x r pixels, weights and bias starting at zero, so the head computes
            what it computed without it), and the classifier runs at the full resolution; its
            MACs are counted. None: the classifier runs on the blocks and the coarse logits are
            upsampled. Default: None.
    """

    def __init__(self, *args, coarse_upsample: Optional[int] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if coarse_upsample is not None and (isinstance(coarse_upsample, bool) or
                                            coarse_upsample not in (2, 4)):
            raise ValueError('MixedScaleUPerHead: coarse_upsample must be None or the neck\'s '
                             f'coarse_reduction (2 or 4), got {coarse_upsample!r}')
        self.coarse_upsample = None
        if coarse_upsample is not None:
            self.coarse_upsample = nn.Conv2d(self.channels,
                                             self.channels * coarse_upsample**2, 1)
            nn.init.zeros_(self.coarse_upsample.weight)
            nn.init.zeros_(self.coarse_upsample.bias)

    def init_weights(self) -> None:
        super().init_weights()
        if self.coarse_upsample is not None:  # zero after any init_cfg: starts as without it
            nn.init.zeros_(self.coarse_upsample.weight)
            nn.init.zeros_(self.coarse_upsample.bias)

    def forward(self, inputs):
        feats = self._forward_mixed(inputs)
        if not isinstance(feats, MixedScaleMap):
            return self.cls_seg(feats)
        if self.coarse_upsample is None:
            return classify(self, feats).to_dense()
        return self.cls_seg(feats.to_dense(self._subpixel(feats)))

    def _subpixel(self, feats: MixedScaleMap) -> torch.Tensor:
        """(N_c, n, n, C): the learned sub-pixel term of every coarse block at the full
        resolution."""
        r = feats.blocks.reduction
        if self.coarse_upsample.out_channels != self.channels * r * r:
            raise ValueError(f'MixedScaleUPerHead: coarse_upsample was built for reduction '
                             f'{self.coarse_upsample.out_channels // self.channels} but the '
                             f'neck\'s coarse_reduction is {r}; set them equal')
        _, coarse = feats.split()
        count, m, _, channels = coarse.shape
        out = F.linear(coarse.reshape(-1, channels), self.coarse_upsample.weight.flatten(1),
                       self.coarse_upsample.bias)
        out = out.view(count, m, m, r, r, channels).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(count, m * r, m * r, channels)

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
        first = selected[0]
        if self.coarse_upsample is None or not isinstance(first, MixedScaleMap):
            return total + conv_module_macs(self.conv_seg, pixels[0])
        # the sub-pixel term on the coarse pixels, then the classifier at the full resolution
        blocks = first.blocks
        coarse = blocks.coarse_count.double() * blocks.side(first.scale, 'coarse')**2
        full = blocks.valid(first.scale, 'fine')
        return total + conv_module_macs(self.coarse_upsample, coarse) + \
            conv_module_macs(self.conv_seg, torch.full_like(total, float(full[0] * full[1])))
