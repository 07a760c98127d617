"""Multiply-accumulate counts (one multiply-add = one MAC) of MSViT, from the tokens used.

The formula (docs/method.md, section 5) is :mod:`mmseg_msvit.models.costs`, re-exported here;
this module adds what runs a model to count: :func:`backbone_macs`, mmengine's counter
(:func:`count_macs_with_mmengine`) and the neck and decode head (:func:`decode_macs`).
"""
from typing import Optional

import torch

from ..models.costs import (add_costs, image_cost, layout_macs, msvit_macs_from_tokens,
                            transformer_layer_macs)
from ..models.features import layout_of

__all__ = [
    'transformer_layer_macs', 'msvit_macs_from_tokens', 'layout_macs', 'image_cost',
    'backbone_macs', 'count_macs_with_mmengine', 'decode_macs', 'dense_decode_macs', 'add_costs',
    'shape_costs',
    'parameter_counts'
]


@torch.no_grad()
def backbone_macs(backbone, img: torch.Tensor, fine_mask: Optional[torch.Tensor] = None,
                  policy=None) -> torch.Tensor:
    """MACs per image of ``backbone`` (MSViT) on ``img``, gate and pooling included.

    Runs the backbone once (in its current train/eval mode) to get the decisions: with
    ``fine_mask`` (given decisions) or ``policy`` (a :class:`~mmseg_msvit.models.ScalePolicy`),
    else the backbone's own policy.

    Returns:
        Tensor: (B,) float64.
    """
    if fine_mask is not None:
        if policy is not None:
            raise ValueError('backbone_macs: give either fine_mask or policy, not both')
        return layout_macs(backbone, layout_of(backbone(img, fine_mask=fine_mask)))
    return layout_macs(backbone, layout_of(backbone(img, policy)))


class _Traced(torch.nn.Module):
    """What the counter traces: ``module(*inputs)`` (with ``policy=`` when given), its outputs
    turned into tensors by ``to_tensors``."""

    def __init__(self, module, to_tensors, policy):
        super().__init__()
        self.module = module
        self.to_tensors = to_tensors
        self.policy = policy

    def forward(self, *inputs):
        outputs = self.module(*inputs) if self.policy is None else \
            self.module(*inputs, policy=self.policy)
        return outputs if self.to_tensors is None else self.to_tensors(outputs)


#: what mmengine's counter counts by default besides matrix products; :func:`decode_macs`
#: leaves them out, as the MAC formula of the backbone does (normalisation, resampling, pooling)
NOT_MATRIX_PRODUCTS = ('aten::batch_norm', 'aten::group_norm', 'aten::layer_norm',
                       'aten::instance_norm', 'aten::upsample_nearest2d',
                       'aten::upsample_bilinear2d', 'aten::adaptive_avg_pool2d',
                       'aten::grid_sampler')


def _matrix_product_into(inputs, outputs):
    """mmengine's ``aten::mm`` count, its two factors read whether or not an ``out=`` tensor
    follows them."""
    from mmengine.analysis.jit_handles import matmul_flop_jit
    return matmul_flop_jit(inputs[:2], outputs)


def count_macs_with_mmengine(module: torch.nn.Module, inputs: tuple, to_tensors=None,
                             policy=None, matrix_products_only: bool = False) -> int:
    """MACs of one forward of ``module(*inputs)`` as mmengine's ``FlopAnalyzer`` counts them.

    mmengine counts a multiply-add of a matrix product as one flop, i.e. one MAC. It does not
    see ``F.scaled_dot_product_attention``: switch a ViT's blocks to their manual attention path
    (``attn.fused_attn = False``) to count attention.

    ``module(*inputs)`` runs with ``policy=policy`` when a policy is given (None: as
    configured), inside :func:`~mmseg_msvit.models.policy.counting_one_forward`: a
    threshold-mode forward is counted with the token count of these inputs, which is the point
    of counting one forward (export still refuses it). ``matrix_products_only``:
    convolutions, linear maps and matrix products only (:data:`NOT_MATRIX_PRODUCTS` left out).
    """
    from mmengine.analysis import FlopAnalyzer

    from ..models.policy import counting_one_forward
    analyzer = FlopAnalyzer(_Traced(module, to_tensors, policy), inputs)
    if matrix_products_only:  # (a None handle is only 'ignored' by mmengine, still counted)
        from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS
        analyzer.clear_op_handles().set_op_handle(**{
            name: handle for name, handle in _DEFAULT_SUPPORTED_FLOP_OPS.items()
            if name not in NOT_MATRIX_PRODUCTS})
    # mmengine's handle of a matrix product reads two inputs; a product written into a given
    # tensor (``torch.mm(a, b, out=...)``, as the mixed-scale bottleneck runs) has that as a third
    analyzer.set_op_handle(**{'aten::mm': _matrix_product_into})
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with counting_one_forward():
        return int(analyzer.total())


@torch.no_grad()
def decode_macs(segmentor, dense_maps) -> int:
    """MACs of the neck's multi-level convolutions and the decode head on dense maps (one
    forward), via mmengine, matrix products only (convolutions, linear maps, attention
    products: the convention of the backbone's formula and of the heads that count
    themselves, ``MixedScaleUPerHead``).

    Args:
        segmentor (MSViTEncoderDecoder): provides ``neck`` (optional) and ``decode_head``.
        dense_maps (list[Tensor]): the backbone taps as dense maps (B, D, H/16, W/16).
    """

    class NeckAndHead(torch.nn.Module):

        def __init__(self, neck, head):
            super().__init__()
            self.neck, self.head = neck, head

        def forward(self, *maps):
            maps = list(maps)
            if self.neck is not None and getattr(self.neck, 'multi_level', None) is not None:
                maps = list(self.neck.multi_level(maps))
            return self.head(maps)

    neck = segmentor.neck if getattr(segmentor, 'with_neck', False) else None
    return count_macs_with_mmengine(NeckAndHead(neck, segmentor.decode_head), tuple(dense_maps),
                                    matrix_products_only=True)


@torch.no_grad()
def dense_decode_macs(segmentor, shape) -> int:
    """:func:`decode_macs` for one input of ``shape`` (H, W): the neck's multi-level
    convolutions and the decode head on the dense maps of the backbone with every region fine,
    plus the neck's coarse unpooling (it runs on every region). For heads that cannot count
    themselves; the figure depends on the input size only, so callers cache it per size."""
    from ..models import ScalePolicy
    device = next(segmentor.parameters()).device
    feats = segmentor.backbone(torch.zeros(1, 3, *shape, device=device),
                               ScalePolicy.forced('fine'))
    unpool_macs = getattr(segmentor.neck, 'unpool_macs', None) if \
        getattr(segmentor, 'with_neck', False) else None
    unpool = unpool_macs(layout_of(feats)) if unpool_macs is not None else 0
    return decode_macs(segmentor, [f.to_dense() for f in feats]) + unpool


def parameter_counts(model) -> dict:
    """Parameters (millions) of a segmentor: whole model, backbone, its gate, neck + heads."""
    def count(module):
        return sum(p.numel() for p in module.parameters()) / 1e6 if module is not None else 0.0

    backbone = model.backbone
    return dict(total=count(model), backbone=count(backbone),
                gate=count(getattr(backbone, 'gate', None)),
                neck_and_heads=count(model) - count(backbone) - count(
                    getattr(model, 'gate_loss', None)))


@torch.no_grad()
def shape_costs(model, shape) -> dict:
    """Backbone and neck + head MACs of one ``shape`` input (no dataset): every region fine (the
    dense ViT), every region coarse and, in budget mode, the budget (exact: the cost does not
    depend on the image there); and mmengine's count of the same dense backbone forward.

    Returns:
        dict: ``rows`` {case: (backbone MACs, neck + head MACs)}, ``padded`` (H, W) and ``grid``
        (regions) of the input, ``self_counted`` (the neck and head counted what they ran;
        False: mmengine on the dense maps), ``mmengine_dense_backbone``.
    """
    from ..models import ScalePolicy
    backbone = model.backbone
    img = torch.zeros(1, 3, *shape)
    padded, _ = backbone.pad_input(img)
    grid = (padded.shape[-2] // backbone.coarse_patch_size,
            padded.shape[-1] // backbone.coarse_patch_size)
    all_fine = torch.ones((1, *grid), dtype=torch.bool)
    cases = [('all fine (dense ViT)', img, ScalePolicy.forced('fine')),
             ('all coarse', img, ScalePolicy.forced('coarse'))]
    if backbone.fine_budget is not None:
        # the budget's cost is the same for every image: count it on a random one
        cases.append((f'budget {backbone.fine_budget}', torch.randn_like(img), None))
    rows, self_counted = {}, True
    for name, image, policy in cases:
        x, layout = model.extract_feat_and_layout(image, policy)
        decode = model.decode_macs(layout, x)
        if decode is None:  # a head that cannot count itself: mmengine, on the dense maps
            self_counted = False
            decode = torch.tensor([float(dense_decode_macs(model, shape))])
        rows[name] = (float(model.image_cost(layout)['macs'][0]), float(decode[0]))
    mmengine_count = count_macs_with_mmengine(
        backbone, (img, ), to_tensors=lambda feats: tuple(f.tokens for f in feats),
        policy=ScalePolicy.given(all_fine))
    return dict(rows=rows, padded=tuple(padded.shape[-2:]), grid=grid,
                self_counted=self_counted, mmengine_dense_backbone=mmengine_count)
