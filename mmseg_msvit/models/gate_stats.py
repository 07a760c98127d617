"""What the segmentor and the classifier both add around an MSViT backbone: the gate loss and
training statistics, and the per-image cost written into predictions."""
from typing import Optional

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


def gate_loss_and_stats(backbone, gate_loss: Optional[object]) -> dict:
    """``loss_gate`` (when there is a gate loss and the gate ran) plus the logged statistics
    ``gate.fine_fraction`` and ``gate.tokens_per_image`` of the backbone's last forward."""
    losses = {}
    probs = backbone.last_gate_probs
    if gate_loss is not None and probs is not None:
        losses[gate_loss.loss_name] = gate_loss(probs)
    losses['gate.fine_fraction'] = backbone.last_fine_mask.float().mean().detach()
    losses['gate.tokens_per_image'] = backbone.last_num_tokens.float().mean().detach()
    return losses


def attach_cost(results, stats: dict):
    """Write the recorded per-image cost into each prediction's metainfo (read by
    ``ComplexityMetric``): ``msvit_backbone_macs``, ``msvit_fine_fraction``,
    ``msvit_num_tokens``, ``msvit_forwards``."""
    for index, sample in enumerate(results):
        sample.set_metainfo(dict(
            msvit_backbone_macs=float(stats['macs'][index]),
            msvit_fine_fraction=float(stats['fine_regions'][index] / stats['regions'][index]),
            msvit_num_tokens=float(stats['tokens'][index]),
            msvit_forwards=int(stats['forwards'][index])))
    return results
