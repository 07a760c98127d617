"""Multiply-accumulate counts (one multiply-add = one MAC) of an MSViT forward, from the tokens
it used: pure functions of a forward's layout, used by the segmentor and classifier to write
the cost into every prediction, and by the analysis tools (:mod:`mmseg_msvit.analysis.macs`
adds the counters that run models). Also the record of one inference call's forwards
(:class:`CallCosts`) and :func:`attach_cost`, which writes it into the predictions.

The formula lives here and only here (docs/method.md, section 5). Per transformer layer with n
tokens (CLS included), width D and MLP ratio r::

    (4 + 2r) * n * D^2  +  2 * n^2 * D      (= 12 n D^2 + 2 n^2 D for r = 4)

qkv (3nD^2) + output projection (nD^2) + MLP (2r nD^2) + attention scores QK^T (n^2 D) and the
weighted sum AV (n^2 D). Patch embedding: (C * S_f^2) * D per patch token. The gate: its MLP per
coarse region when it runs. Pooling: C * S_c^2 per coarse token (averaging its pixels) plus
(S_c/S_f)^2 * D per coarse token for its averaged position embedding. LayerNorms, softmax, GELU
and residual additions are not multiply-adds of a matrix product and are not counted (as in the
widely quoted ViT figures: ViT-Ti/S/B at 224 px = 1.26 / 4.6 / 17.6 GMACs).
"""
from typing import Dict, Optional

import torch

__all__ = ['transformer_layer_macs', 'msvit_macs_from_tokens', 'layout_macs', 'image_cost',
           'add_costs', 'CallCosts', 'attach_cost']


def transformer_layer_macs(num_tokens, embed_dims: int, mlp_ratio: float = 4.0):
    """MACs of one ViT block for ``num_tokens`` tokens (CLS included); works on tensors."""
    return (4 + 2 * mlp_ratio) * num_tokens * embed_dims**2 + 2 * num_tokens**2 * embed_dims


def msvit_macs_from_tokens(backbone,
                           num_patch_tokens: torch.Tensor,
                           num_coarse_tokens: torch.Tensor,
                           num_regions: int,
                           gate_macs_per_region: int = 0) -> torch.Tensor:
    """Per-image MACs of an MSViT forward.

    Args:
        backbone (MSViT): provides widths, depth, patch sizes and the coarse-token extras.
        num_patch_tokens (Tensor): (B,) patch tokens per image (CLS excluded, padding excluded).
        num_coarse_tokens (Tensor): (B,) how many of them are coarse.
        num_regions (int): coarse regions of the (padded) input.
        gate_macs_per_region (int): MACs per region of the gate that ran (0: no gate ran).

    Returns:
        Tensor: (B,) float64 MACs.
    """
    tokens = num_patch_tokens.double() + backbone.num_prefix_tokens
    dims, channels = backbone.embed_dims, backbone.in_channels
    macs = backbone.depth * transformer_layer_macs(tokens, dims, backbone.mlp_ratio)
    macs = macs + num_patch_tokens.double() * channels * backbone.fine_patch_size**2 * dims
    ratio = backbone.coarse_patch_size // backbone.fine_patch_size
    # pooling: pixels of each coarse patch, and the averaged position embedding of each
    macs = macs + num_coarse_tokens.double() * (channels * backbone.coarse_patch_size**2 +
                                                ratio**2 * dims)
    coarse_embed = getattr(backbone, 'coarse_embed', None)
    if coarse_embed is not None:  # the coarse tokens' detail residual
        macs = macs + num_coarse_tokens.double() * coarse_embed.macs_per_token
    return macs + num_regions * gate_macs_per_region


def layout_macs(backbone, layout) -> torch.Tensor:
    """(B,) float64 MACs of the forward that produced ``layout`` (a pure function of it)."""
    num_coarse = (~layout.fine_mask).flatten(1).sum(1)
    return msvit_macs_from_tokens(backbone, layout.num_tokens, num_coarse, layout.num_regions,
                                  layout.gate_macs_per_region)


def image_cost(backbone, layout) -> Dict[str, torch.Tensor]:
    """Per-image cost of one backbone forward, as summable (B,) float64 tensors: ``macs`` (the
    backbone's, gate, pooling and coarse-token extras included), ``fine_regions``, ``regions``,
    ``tokens`` and ``forwards`` (1 each). Slide inference adds the dicts of its windows
    (:func:`add_costs`). What the neck and head run (the neck's coarse-token unpooling
    included) is theirs to count (``decode_macs``)."""
    macs = layout_macs(backbone, layout).detach()
    return dict(macs=macs,
                fine_regions=layout.fine_mask.flatten(1).sum(1).double(),
                regions=torch.full_like(macs, layout.num_regions),
                tokens=layout.num_tokens.double(),
                forwards=torch.ones_like(macs))


def add_costs(total: Optional[Dict[str, torch.Tensor]],
              cost: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Sum two :func:`image_cost` dicts (``total`` may be None)."""
    if total is None:
        return dict(cost)
    return {key: total[key] + cost[key] for key in total}


class CallCosts:
    """The costs of every forward of one inference call (one per slide window, one in whole
    mode): summed per image in :attr:`total`; the decisions kept apart (:attr:`fine_mask`, a
    map per image only when one forward covered the image)."""

    def __init__(self) -> None:
        self.total: Optional[Dict[str, torch.Tensor]] = None
        #: (B, Hc, Wc) bool decisions of the call's one forward; None after several (slide
        #: windows: no single map of the image)
        self.fine_mask: Optional[torch.Tensor] = None

    def add(self, cost: Dict[str, torch.Tensor], fine_mask: torch.Tensor) -> None:
        """Count one forward: its :func:`image_cost` (plus ``decode_macs`` where the neck and head
        count themselves) and its (B, Hc, Wc) decisions."""
        self.fine_mask = fine_mask.detach() if self.total is None else None
        self.total = add_costs(self.total, cost)


def attach_cost(results, cost: dict, fine_mask=None):
    """Write the per-image cost (:func:`mmseg_msvit.models.costs.image_cost`, summed over slide
    windows) into each prediction's metainfo (read by ``ComplexityMetric``):
    ``msvit_backbone_macs``, ``msvit_fine_fraction``, ``msvit_num_tokens``, ``msvit_forwards``,
    ``msvit_decode_macs`` (neck + decode head) and ``msvit_macs`` (the whole model) when the
    neck and head count themselves, and ``msvit_fine_mask`` ((Hc, Wc) bool on the CPU) when
    ``fine_mask`` gives the decisions of one forward per image (whole inference,
    classification)."""
    cost = {key: value.detach().cpu() for key, value in cost.items() if value is not None}
    fine_mask = None if fine_mask is None else fine_mask.detach().cpu()  # one device read each
    for index, sample in enumerate(results):
        info = dict(
            msvit_backbone_macs=float(cost['macs'][index]),
            msvit_fine_fraction=float(cost['fine_regions'][index] / cost['regions'][index]),
            msvit_num_tokens=float(cost['tokens'][index]),
            msvit_forwards=int(cost['forwards'][index]))
        if cost.get('decode_macs') is not None:
            info['msvit_decode_macs'] = float(cost['decode_macs'][index])
            info['msvit_macs'] = info['msvit_backbone_macs'] + info['msvit_decode_macs']
        if fine_mask is not None:
            info['msvit_fine_mask'] = fine_mask[index]
        sample.set_metainfo(info)
    return results
