"""Training the gate, for the segmentor and the classifier alike: the gate loss and its training
statistics, the gate probe (with the batch-norm freeze its extra forwards need), and the warning
for a gate that nothing but the task loss trains. Everything is read from the layout a forward
returns. (The per-image cost written into predictions is in :mod:`.costs`; the normalisation
check of a transferred gate in :mod:`.checkpoints.gate_files`.)"""
import logging
import warnings
from contextlib import contextmanager
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log
from mmseg.registry import MODELS

from .arguments import check_positive_int
from .builder import build_component


def build_gate_loss(cfg: Optional[dict], backbone, owner: str):
    """Build the gate loss of a segmentor/classifier; None when ``cfg`` is None.

    Refused when the backbone's scale is forced: the gate never runs, so the loss's parameters
    (GBaS prior) would never get a gradient (and DistributedDataParallel stops on them).
    """
    if cfg is None:
        return None
    force_scale = getattr(backbone, 'force_scale', None)
    if force_scale is not None:
        raise ValueError(f'{owner}: gate_loss={cfg.get("type", cfg)} is set but the backbone has '
                         f'force_scale={force_scale!r}, so the gate never runs; set '
                         'model.gate_loss=None for a forced-scale baseline')
    return build_component(cfg)


def build_gate_probe(cfg: Optional[dict], owner: str):
    """Build a gate probe (``type`` defaults to 'GateProbe'); None when ``cfg`` is None."""
    if cfg is None:
        return None
    cfg = dict(cfg)
    cfg.setdefault('type', 'GateProbe')
    return build_component(cfg)


class UntrainedGateWarning:
    """The warning (once) when a gate trains with nothing but the task loss: no gate loss, no
    probe, so its fine fraction is uncontrolled (the paper's ablation at most).

    MSViT's forward runs its check (:meth:`check`) on every training forward. Its default names
    the wrappers that can train a gate; :class:`MSViTEncoderDecoder` and
    :class:`MSViTImageClassifier`, which own the gate losses, declare themselves with
    ``MSViT.declare_gate_training(owner, trained)``, which puts theirs in its place.

    Args:
        owner (str): who attached it (the backbone, or the wrapper's class name).
        trained (bool): whether a gate loss or a gate probe trains the gate (then it never
            warns).
    """

    def __init__(self, owner: str, trained: bool) -> None:
        self.owner = owner
        self.trained = trained
        self.warned = False

    def check(self, backbone: nn.Module, layout) -> None:
        """Warn (once) when ``backbone`` trains its gate in a forward of ``layout`` and nothing
        but the task loss trains it."""
        if self.trained or self.warned or not backbone.training or \
                layout.gate_logits is None or \
                not any(p.requires_grad for p in backbone.gate.parameters()):
            return
        self.warned = True
        if self.owner == 'MSViT':
            remedy = ("use model.type='MSViTEncoderDecoder' (or 'MSViTImageClassifier') with "
                      "gate_loss=dict(type='GBaSLoss', target=...), or set freeze_gate=True, "
                      "force_scale='fine' or a fine_budget")
        else:
            remedy = (f"give the {self.owner} a gate_loss=dict(type='GBaSLoss', target=...) or "
                      "a gate_probe, or set on the backbone freeze_gate=True, "
                      "force_scale='fine' or a fine_budget")
        message = ('MSViT is training a gate that no gate loss or probe trains (only the task '
                   f'loss reaches it, and its fine fraction is uncontrolled): {remedy}')
        warnings.warn(message, stacklevel=3)
        print_log(message, logger='current', level=logging.WARNING)


def gate_loss_and_stats(layout, gate_loss: Optional[nn.Module]) -> dict:
    """``loss_gate`` (when there is a gate loss and the gate ran) plus the logged statistics
    ``gate.fine_fraction`` and ``gate.tokens_per_image`` of one forward's layout."""
    losses = {}
    if gate_loss is not None and layout.gate_logits is not None:
        losses[gate_loss.loss_name] = gate_loss(torch.sigmoid(layout.gate_logits))
    losses['gate.fine_fraction'] = layout.fine_mask.float().mean().detach()
    losses['gate.tokens_per_image'] = layout.num_tokens.float().mean().detach()
    return losses


def current_target(gate_loss: Optional[nn.Module], default: float = 0.5) -> float:
    """The gate loss's (annealed) fine-fraction target, else ``default``."""
    return gate_loss.current_target() if hasattr(gate_loss, 'current_target') else default


def probe_labels(benefit: torch.Tensor, target: float) -> torch.Tensor:
    """1.0 (fine) for the probed regions whose benefit of fine tokens is in the top ``target``
    share of those probed, 0.0 (coarse) for the others; all fine when ``target >= 1``."""
    if target >= 1.0:
        return torch.ones_like(benefit)
    threshold = torch.quantile(benefit.flatten().float(), min(max(1.0 - target, 0.0), 1.0))
    return (benefit > threshold).to(benefit.dtype)


@contextmanager
def frozen_batch_norm(model: nn.Module):
    """BatchNorm layers keep their running statistics during the extra forwards (their count
    of batches too, which a cumulative average, ``momentum=None``, divides by)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
              for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum, count in zip(norms, momenta, counts):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


@MODELS.register_module()
class GateProbe(nn.Module):
    """Teach the gate the measured effect of switching a region's scale (our option, not the
    paper's).

    The straight-through gradient follows the real effect of switching a region only weakly
    (``tools/analysis_tools/gate_signal.py``), so the gate can be taught that effect directly.
    Each iteration, for ``num_images`` images of the batch and ``regions_per_image`` random
    regions in each, the model's own task loss (``task_loss_per_image``: the decode head's or the
    classification head's loss, with its sampler, class weights and loss settings) is computed
    with the region switched, the other regions as the gate decided (extra forwards without
    gradient, BatchNorm statistics untouched); the regions whose benefit of fine tokens
    (loss coarse - loss fine) is in the top ``target`` share of those probed (``target``: the gate
    loss's current target, else 0.5) are labelled fine, the others coarse, and the gate's logits
    there get a binary cross-entropy. Cost: ``num_images x (regions_per_image + 1)`` image
    forwards per iteration. Shared by :class:`MSViTEncoderDecoder` and
    :class:`MSViTImageClassifier`; configured like ``gate_loss``::

        gate_probe=dict(type='GateProbe', num_images=4, regions_per_image=2, loss_weight=1.0)

    Args:
        num_images (int): images of the batch probed per iteration. Default: 4.
        regions_per_image (int): regions switched per probed image. Default: 2.
        loss_weight (float): Default: 1.0.
        loss_name (str): Default: 'loss_gate_probe'.
    """

    def __init__(self, num_images: int = 4, regions_per_image: int = 2, loss_weight: float = 1.0,
                 loss_name: str = 'loss_gate_probe') -> None:
        super().__init__()
        for key, value in (('num_images', num_images), ('regions_per_image', regions_per_image)):
            check_positive_int('GateProbe', key, value, expected='an int >= 1')
        self.num_images = num_images
        self.regions_per_image = regions_per_image
        self.loss_weight = float(loss_weight)
        self.loss_name = loss_name

    def forward(self, model: nn.Module, inputs: torch.Tensor, data_samples, layout,
                target: float) -> torch.Tensor:
        """The probe loss for one training batch whose forward returned ``layout``.

        ``model`` provides ``task_loss_per_image(inputs, data_samples, fine_mask)`` -> (N,).
        """
        logits = layout.gate_logits  # (B, Hc, Wc), with grad, from this iteration
        batch, rows, cols = logits.shape
        num_images = min(self.num_images, batch)
        per_image = min(self.regions_per_image, rows * cols)
        device = logits.device
        images = torch.randperm(batch, device=device)[:num_images]
        regions = torch.stack([torch.randperm(rows * cols, device=device)[:per_image]
                               for _ in range(num_images)])  # (n, K)
        base = layout.fine_mask[images].flatten(1)  # (n, Hc*Wc) decisions of this iteration
        masks = [base]
        for k in range(per_image):
            flipped = base.clone()
            flipped.scatter_(1, regions[:, k:k + 1], ~base.gather(1, regions[:, k:k + 1]))
            masks.append(flipped)
        masks = torch.cat(masks).view(-1, rows, cols)
        samples = [data_samples[int(i)] for i in images] * (per_image + 1)
        with frozen_batch_norm(model), torch.no_grad():
            image_loss = model.task_loss_per_image(
                inputs[images].repeat(per_image + 1, 1, 1, 1), samples,
                masks).view(per_image + 1, num_images)
        was_fine = base.gather(1, regions)  # (n, K)
        change = image_loss[1:].T - image_loss[0][:, None]  # loss(switched) - loss(as decided)
        benefit = torch.where(was_fine, change, -change)  # loss(coarse) - loss(fine)
        picked = logits[images].flatten(1).gather(1, regions)
        return self.loss_weight * F.binary_cross_entropy_with_logits(
            picked, probe_labels(benefit, target))


__all__ = [
    'build_gate_loss', 'build_gate_probe', 'gate_loss_and_stats', 'current_target',
    'probe_labels',
    'frozen_batch_norm', 'GateProbe', 'UntrainedGateWarning'
]
