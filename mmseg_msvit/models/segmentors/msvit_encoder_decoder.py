"""EncoderDecoder that trains the MSViT gate with a gate loss and reports what the gate did."""
from typing import Optional

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ..gate_stats import attach_cost, build_gate_loss, gate_loss_and_stats


def input_normalisation(data_preprocessor) -> Optional[dict]:
    """mean / std / bgr_to_rgb of an mmseg or mmpretrain data preprocessor (None if it does not
    normalise)."""
    if not getattr(data_preprocessor, '_enable_normalize', False):
        return None
    return dict(mean=data_preprocessor.mean.flatten().tolist(),
                std=data_preprocessor.std.flatten().tolist(),
                bgr_to_rgb=bool(getattr(data_preprocessor, 'channel_conversion',
                                        getattr(data_preprocessor, 'to_rgb', False))))


def probe_labels(benefit: Tensor, target: float) -> Tensor:
    """1.0 (fine) for the probed regions whose benefit of fine tokens is in the top ``target``
    share of those probed, 0.0 (coarse) for the others; all fine when ``target >= 1``."""
    if target >= 1.0:
        return torch.ones_like(benefit)
    threshold = torch.quantile(benefit.flatten().float(), min(max(1.0 - target, 0.0), 1.0))
    return (benefit > threshold).to(benefit.dtype)


@MODELS.register_module()
class MSViTEncoderDecoder(EncoderDecoder):
    """mmseg's :class:`EncoderDecoder` plus the gate loss of an MSViT backbone.

    Training: the decode (and auxiliary) losses as usual, plus ``gate_loss`` computed on the
    gate probabilities the backbone kept from this very forward (no second pass), logged under
    the loss's name (``loss_gate``). Each iteration also logs ``gate.fine_fraction`` (share of
    regions split into fine tokens in the batch) and ``gate.tokens_per_image`` (patch tokens per
    image). When the backbone's scale is forced (dense / all-coarse baselines) there are no gate
    probabilities and no gate loss.

    Inference (whole or slide): every predicted sample carries, in its metainfo,
    ``msvit_backbone_macs`` (backbone multiply-adds for the image, summed over slide windows, gate
    and pooling included), ``msvit_fine_fraction``, ``msvit_num_tokens`` and ``msvit_forwards``
    (backbone forwards, i.e. slide windows); the
    ``ComplexityMetric`` reports them beside mIoU.

    Gate probe (``gate_probe``, our option, not in the paper): the straight-through gradient
    follows the real effect of switching a region's scale only weakly
    (``tools/analysis_tools/gate_signal.py``), so the gate can also be taught that effect
    directly. Each iteration, for ``num_images`` images of the batch and ``regions_per_image``
    random regions in each, the decode head's cross-entropy is computed with the region switched
    (the other regions as the gate decided; extra forward passes without gradient and without
    touching BatchNorm statistics); the regions whose benefit of fine tokens (loss coarse - loss
    fine) lies in the top ``target`` share of the sampled ones (``target`` = the gate loss's
    current target, else 0.5) are labelled fine, the others coarse, and the gate's logits there
    get a binary cross-entropy, logged as ``loss_gate_probe``. Cost: ``num_images x
    (regions_per_image + 1)`` image forwards per iteration.

    Args:
        gate_loss (dict, optional): e.g. ``dict(type='GBaSLoss', grid_size=(16, 16),
            target=0.5)``. None: no gate loss.
        gate_probe (dict, optional): ``dict(num_images=4, regions_per_image=2, loss_weight=1.0)``;
            None (default): no probe. Other arguments: as EncoderDecoder.
    """

    def __init__(self,
                 *args,
                 gate_loss: Optional[dict] = None,
                 gate_probe: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate_loss = build_gate_loss(gate_loss, self.backbone, 'MSViTEncoderDecoder')
        if gate_probe is not None:
            unknown = set(gate_probe) - {'num_images', 'regions_per_image', 'loss_weight'}
            if unknown:
                raise ValueError(f'MSViTEncoderDecoder: gate_probe has unknown keys '
                                 f'{sorted(unknown)}; expected num_images, regions_per_image, '
                                 'loss_weight')
            gate_probe = dict(dict(num_images=4, regions_per_image=2, loss_weight=1.0),
                              **gate_probe)
            for key in ('num_images', 'regions_per_image'):
                if int(gate_probe[key]) < 1:
                    raise ValueError(f'MSViTEncoderDecoder: gate_probe {key} must be >= 1, got '
                                     f'{gate_probe[key]}')
        self.gate_probe = gate_probe
        for name in ('last_gate_probs', 'start_recording', 'stop_recording'):
            if not hasattr(self.backbone, name):
                raise TypeError(f'MSViTEncoderDecoder: the backbone '
                                f'{type(self.backbone).__name__} is not an MSViT (no {name})')
        self.backbone.input_normalisation = input_normalisation(self.data_preprocessor)

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        losses = super().loss(inputs, data_samples)
        losses.update(gate_loss_and_stats(self.backbone, self.gate_loss))
        if self.gate_probe is not None and self.backbone.last_gate_logits is not None:
            losses['loss_gate_probe'] = self._gate_probe_loss(inputs, data_samples)
        return losses

    def _gate_probe_loss(self, inputs: Tensor, data_samples: SampleList) -> Tensor:
        backbone = self.backbone
        logits = backbone.last_gate_logits  # (B, Hc, Wc), with grad, from this iteration
        kept = (backbone.last_fine_mask, backbone.last_num_tokens, backbone.last_macs)
        batch, rows, cols = logits.shape
        num_images = min(int(self.gate_probe['num_images']), batch)
        per_image = min(int(self.gate_probe['regions_per_image']), rows * cols)
        device = logits.device
        images = torch.randperm(batch, device=device)[:num_images]
        regions = torch.stack([torch.randperm(rows * cols, device=device)[:per_image]
                               for _ in range(num_images)])  # (n, K)
        base = kept[0][images].flatten(1)  # (n, Hc*Wc) decisions of this iteration
        masks = [base]
        for k in range(per_image):
            flipped = base.clone()
            flipped.scatter_(1, regions[:, k:k + 1], ~base.gather(1, regions[:, k:k + 1]))
            masks.append(flipped)
        masks = torch.cat(masks).view(-1, rows, cols)
        labels = torch.stack([data_samples[int(i)].gt_sem_seg.data[0] for i in images]).long()
        norms = [m for m in self.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        try:
            for m in norms:
                m.momentum = 0.0  # running statistics stay as they are
            with torch.no_grad():
                image_loss = self.decode_loss_per_image(
                    inputs[images].repeat(per_image + 1, 1, 1, 1),
                    labels.repeat(per_image + 1, 1, 1), masks).view(per_image + 1, num_images)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            backbone.last_fine_mask, backbone.last_num_tokens, backbone.last_macs = kept
            backbone.last_gate_logits = logits
        was_fine = base.gather(1, regions)  # (n, K)
        change = image_loss[1:].T - image_loss[0][:, None]  # loss(switched) - loss(as decided)
        benefit = torch.where(was_fine, change, -change)  # loss(coarse) - loss(fine)
        target = self.gate_loss.current_target() if hasattr(self.gate_loss, 'current_target') \
            else 0.5
        picked = logits[images].flatten(1).gather(1, regions)
        return self.gate_probe['loss_weight'] * F.binary_cross_entropy_with_logits(
            picked, probe_labels(benefit, target))

    def decode_loss_per_image(self,
                              inputs: Tensor,
                              labels: Tensor,
                              fine_mask: Tensor,
                              fine_value: Optional[Tensor] = None) -> Tensor:
        """(N,) mean cross-entropy of the decode head per image, with the given scale decisions.

        Args:
            inputs (Tensor): (N, C, H, W) preprocessed images.
            labels (Tensor): (N, h, w) long labels; logits are resized to them.
            fine_mask (Tensor): (N, Hc, Wc) bool decisions (see ``MSViT.forward``).
            fine_value (Tensor, optional): straight-through gate values for ``fine_mask``.
        """
        feats = self.backbone(inputs, fine_mask=fine_mask, fine_value=fine_value)
        if self.with_neck:
            feats = self.neck(feats)
        seg = F.interpolate(self.decode_head.forward(feats), size=labels.shape[-2:],
                            mode='bilinear', align_corners=self.align_corners)
        ignore = getattr(self.decode_head, 'ignore_index', 255)
        pixel_loss = F.cross_entropy(seg, labels, ignore_index=ignore, reduction='none')
        valid = (labels != ignore).sum((1, 2)).clamp(min=1)
        return pixel_loss.sum((1, 2)) / valid

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None) -> SampleList:
        self.backbone.start_recording()
        try:
            results = super().predict(inputs, data_samples)
        finally:
            stats = self.backbone.stop_recording()
        return attach_cost(results, stats)
