"""The MAC formula against mmengine's counter and against the widely quoted dense figures."""
import pytest
import torch

from mmseg_msvit.analysis import backbone_macs, count_macs_with_mmengine, transformer_layer_macs
from mmseg_msvit.models import MSViT


def _manual_attention(model):
    for block in model.blocks:
        block.attn.fused_attn = False  # mmengine's counter does not see SDPA
    return model


def _tokens(features):
    return tuple(f.tokens for f in features)


@pytest.mark.parametrize('arch,quoted', [('tiny', 1.26e9), ('small', 4.6e9), ('base', 17.6e9)])
def test_dense_vits_match_the_quoted_figures(arch, quoted):
    model = MSViT(arch=arch, force_scale='fine').eval()
    macs = float(backbone_macs(model, torch.zeros(1, 3, 224, 224))[0])
    assert abs(macs - quoted) / quoted < 0.02, macs


@pytest.mark.parametrize('force_scale', ['fine', 'coarse'])
def test_formula_agrees_with_mmengine_counter(force_scale):
    model = _manual_attention(MSViT(arch='small', force_scale=force_scale)).eval()
    img = torch.randn(1, 3, 224, 320)
    counted = count_macs_with_mmengine(model, (img, ), _tokens)
    formula = float(backbone_macs(model, img)[0])
    assert abs(counted - formula) / counted < 0.01, (counted, formula)


def test_gated_forward_agrees_with_the_counter_per_image():
    torch.manual_seed(0)
    model = _manual_attention(MSViT(arch='tiny')).eval()
    img = torch.randn(2, 3, 224, 224)
    per_image = backbone_macs(model, img)
    with torch.no_grad():
        tokens = model(img)[0].layout.num_tokens
    assert (per_image[0] > per_image[1]) == bool(tokens[0] > tokens[1])  # cost follows tokens
    for index in range(2):
        counted = count_macs_with_mmengine(model, (img[index:index + 1], ), _tokens)
        assert abs(counted - float(per_image[index])) / counted < 0.01


def test_layer_formula():
    assert transformer_layer_macs(197, 384) == 12 * 197 * 384**2 + 2 * 197**2 * 384


def test_gmacs_fall_monotonically_as_the_threshold_rises():
    torch.manual_seed(1)
    model = MSViT(arch='tiny', gate=dict(type='MixedScaleGate', hidden_dims=(32, ))).eval()
    img = torch.randn(4, 3, 128, 128)
    costs = []
    for threshold in (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0):
        model.gate_threshold = threshold
        costs.append(float(backbone_macs(model, img).sum()))
    assert all(a >= b for a, b in zip(costs, costs[1:]))
    assert costs[0] > costs[-1]
