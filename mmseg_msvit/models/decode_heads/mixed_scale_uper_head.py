"""UPerHead whose finer levels spend their compute where the tokens are fine."""
from typing import List

import torch
import torch.nn as nn
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
        coarse_norms (bool): our option: the coarse blocks of a mixed level get BatchNorms of
            their own (statistics and affine parameters), copies of the layer's BatchNorm
            where a checkpoint has none (a dense or mmseg checkpoint); the fine blocks and every
            dense level keep the layer's own. Default: False.
    """

    #: the ConvModules that may run on mixed levels: (name, level index or None = the finest)
    MIXED_LAYERS = ('lateral_convs', 'fpn_convs', 'fpn_bottleneck')

    def __init__(self, *args, coarse_norms: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(coarse_norms, bool):
            raise ValueError(f'MixedScaleUPerHead: coarse_norms must be True or False, got '
                             f'{coarse_norms!r}')
        self.coarse_norms = None
        if coarse_norms:
            import copy
            self.coarse_norms = nn.ModuleDict({
                name.replace('.', '_'): copy.deepcopy(module.norm)
                for name, module in self._mixed_conv_modules() if module.with_norm})
            self._register_load_state_dict_pre_hook(self._fill_coarse_norms)

    def _mixed_conv_modules(self):
        for i, conv in enumerate(self.lateral_convs):
            yield f'lateral_convs.{i}', conv
        for i, conv in enumerate(self.fpn_convs):
            yield f'fpn_convs.{i}', conv
        yield 'fpn_bottleneck', self.fpn_bottleneck

    def _fill_coarse_norms(self, state_dict, prefix, *args) -> None:
        """A checkpoint without coarse norms (dense, mmseg's) gives them the layer's own."""
        for name, module in self._mixed_conv_modules():
            key = name.replace('.', '_')
            if key not in self.coarse_norms:
                continue
            source = f'{prefix}{name}.{module.norm_name}.'
            target = f'{prefix}coarse_norms.{key}.'
            for k in [k for k in state_dict if k.startswith(source)]:
                state_dict.setdefault(target + k[len(source):], state_dict[k].clone())

    def _coarse_norm(self, name: str):
        """The coarse blocks' norm of layer ``name`` (None: they share the layer's)."""
        key = name.replace('.', '_')
        return self.coarse_norms[key] if self.coarse_norms is not None and \
            key in self.coarse_norms else None

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
        laterals = [conv_module(conv, selected[i], self._coarse_norm(f'lateral_convs.{i}'))
                    for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(selected))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = add(laterals[i - 1],
                                  resample(laterals[i], scales[i], laterals[i - 1]))
        fpn_outs = [conv_module(self.fpn_convs[i], laterals[i],
                                self._coarse_norm(f'fpn_convs.{i}'))
                    for i in range(len(laterals) - 1)]
        fpn_outs.append(laterals[-1])
        fpn_outs = [fpn_outs[0]] + [resample(x, scales[i + 1], fpn_outs[0])
                                    for i, x in enumerate(fpn_outs[1:])]
        return conv_module(self.fpn_bottleneck, cat(fpn_outs),
                           self._coarse_norm('fpn_bottleneck'))

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
