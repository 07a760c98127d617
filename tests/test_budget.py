"""Budget mode: exactly round(f * regions) fine regions per image, static shapes, export; and the
training-free content gate."""
import pytest
import torch

from mmseg_msvit.analysis import backbone_macs
from mmseg_msvit.models import MSViT


def tiny(**kwargs):
    kwargs.setdefault('arch', dict(embed_dims=48, depth=2, num_heads=3))
    kwargs.setdefault('img_size', 64)
    kwargs.setdefault('out_indices', (0, 1))
    return MSViT(**kwargs)


def test_every_image_keeps_exactly_the_budget_and_the_gates_top_scores():
    torch.manual_seed(0)
    model = tiny(fine_budget=0.3).eval()
    img = torch.randn(4, 3, 96, 160)  # 3 x 5 = 15 regions -> 4.5, half up: 5 fine
    with torch.no_grad():
        features = model(img)
        layout = features[0].layout
    assert layout.fine_mask.flatten(1).sum(1).tolist() == [5] * 4
    assert layout.num_tokens.tolist() == [15 + 3 * 5] * 4  # equal counts, so no padding
    assert bool(layout.valid.all())
    # the decisions are the explicit top-k of the gate's logits
    logits = layout.gate_logits.flatten(1)
    topk = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.topk(5, 1).indices,
                                                               True).view_as(layout.fine_mask)
    assert torch.equal(layout.fine_mask, topk)
    with torch.no_grad():
        explicit = model(img, fine_mask=topk)
    for ours, theirs in zip(features, explicit):
        torch.testing.assert_close(ours.tokens, theirs.tokens)
    # equal cost for every image of the batch
    macs = backbone_macs(model, img)
    assert torch.all(macs == macs[0])
    # no padding mask reaches attention
    padded, _ = model.pad_input(img)
    tokens = model.embed(padded, model.decide_scales(padded))
    assert tokens.attn_mask is None


def test_budget_one_is_the_dense_vit_and_cost_rises_with_the_budget():
    torch.manual_seed(1)
    model = tiny().eval()
    dense = tiny(force_scale='fine').eval()
    dense.load_state_dict(model.state_dict())
    img = torch.randn(2, 3, 128, 128)
    model.fine_budget = 1.0
    with torch.no_grad():
        for ours, theirs in zip(model(img), dense(img)):
            torch.testing.assert_close(ours.tokens, theirs.tokens)
    costs = []
    for budget in (0.1, 0.25, 0.5, 0.75, 1.0):
        model.fine_budget = budget
        costs.append(float(backbone_macs(model, img)[0]))
    assert all(a < b for a, b in zip(costs, costs[1:])), costs


def test_budget_is_checked_and_settable_after_building():
    model = tiny()
    assert tiny(fine_budget=0.01).policy.num_fine_regions(4) == 1  # a budget is > 0: at least one
    for bad in (0, 0.0, 1.5, -0.2, float('nan'), '0.5', True):
        with pytest.raises(ValueError, match='fine_budget must be None .* or a number in'):
            model.fine_budget = bad
    with pytest.raises(ValueError, match='fine_budget'):
        tiny(fine_budget=2)
    model.fine_budget = 0.5
    assert model.fine_budget == 0.5
    model.fine_budget = None
    assert model.fine_budget is None


def test_budget_training_reaches_the_gate_through_the_top_k():
    torch.manual_seed(2)
    model = tiny(fine_budget=0.5, out_indices=(1, )).train()
    (features, ) = model(torch.randn(2, 3, 64, 96))
    assert features.fine_mask.flatten(1).sum(1).tolist() == [3, 3]
    features.to_dense().square().mean().backward()
    grads = [p.grad for p in model.gate.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_threshold_mode_refuses_trace_and_export_and_points_to_budget_mode():
    from mmseg_msvit.deployment import DenseBackbone
    module = DenseBackbone(tiny().eval())
    img = torch.randn(1, 3, 64, 64)
    with pytest.raises(RuntimeError, match='threshold mode.*fine_budget'):
        torch.jit.trace(module, (img, ))
    with pytest.raises(RuntimeError, match='threshold mode.*fine_budget'):
        torch.export.export(module, (img, ))


@pytest.mark.parametrize('shape', [(224, 224), (96, 160)])
def test_budget_mode_exports_to_onnx_and_matches_eager(shape, tmp_path):
    pytest.importorskip('onnxruntime')  # tests.txt installs it; users may not have it
    from mmseg_msvit.deployment import (DenseBackbone, export_onnx, max_abs_difference,
                                        onnxruntime_outputs)
    torch.manual_seed(3)
    module = DenseBackbone(tiny(fine_budget=0.5).eval())
    img = torch.randn(2, 3, *shape)
    torch.export.export(module, (img, ))
    export_onnx(module, img, str(tmp_path / 'backbone.onnx'))
    other = torch.randn(2, 3, *shape)  # other images: other decisions, same shapes
    for example in (img, other):
        with torch.no_grad():
            eager = module(example)
        assert max_abs_difference(eager, onnxruntime_outputs(str(tmp_path / 'backbone.onnx'),
                                                             example)) < 1e-4


def test_backbone_itself_exports_in_budget_mode():
    """torch.export of the bare backbone: its MixedScaleFeatures outputs are a registered pytree
    (tokens and layout come back as they are in eager mode)."""
    torch.manual_seed(4)
    model = tiny(fine_budget=0.5, coarse_detail=True).eval()
    img = torch.randn(2, 3, 64, 96)
    program = torch.export.export(model, (img, ))
    other = torch.randn(2, 3, 64, 96)  # other decisions, same shapes
    with torch.no_grad():
        exported, eager = program.module()(other), model(other)
    assert all(type(f).__name__ == 'MixedScaleFeatures' for f in exported)
    assert torch.equal(exported[0].layout.fine_mask, eager[0].layout.fine_mask)
    for a, b in zip(exported, eager):
        torch.testing.assert_close(a.to_dense(), b.to_dense())


def test_budget_mode_compiles_once_per_input_size_without_graph_breaks():
    compiles = []

    def counting_backend(graph_module, example_inputs):
        compiles.append(len(example_inputs))
        return graph_module.forward

    torch._dynamo.reset()
    model = tiny(fine_budget=0.5).eval()
    compiled = torch.compile(model, backend=counting_backend, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for size in ((64, 96), (64, 96), (96, 96)):
            out = compiled(torch.randn(2, 3, *size))
            eager = model(torch.randn(2, 3, *size))
            assert out[0].tokens.shape == eager[0].tokens.shape
    assert len(compiles) == 2  # one graph per input size, fullgraph: no break
    torch._dynamo.reset()


def test_content_gate_ranks_a_flat_region_below_a_textured_one():
    from mmseg_msvit.models.gates import ContentGate
    gate = ContentGate()
    img = torch.zeros(1, 3, 32, 96)
    img[..., 32:64] = torch.linspace(-1, 1, 32)[None, None, None, :]  # smooth ramp
    img[..., 64:] = (torch.arange(32) % 2).float()[None, None, :, None]  # 1 px stripes
    scores = gate(img)[0, 0]
    assert scores[0] < scores[2] and scores[1] < scores[2]
    assert list(gate.parameters()) == []


def test_structure_score_ignores_grain_and_finds_areas_the_pixel_energy_misses():
    """structure_px=4: the variance of 4x4 averages. 1 px stripes (grain) average out; two flat
    areas meeting on a 16 px line lose nothing to the coarse token's 2x2 pooling, so the pixel
    energy calls them flat, while their structure is the largest."""
    from mmseg_msvit.models.gates import ContentGate
    img = torch.zeros(1, 3, 32, 96)
    img[..., 32:64] = (torch.arange(32) % 2).float()[None, None, :, None]  # 1 px stripes
    img[..., 64:80] = 1.0  # region 3: two flat areas, the line at 16 px
    pixel, structure = ContentGate()(img)[0, 0], ContentGate(structure_px=4)(img)[0, 0]
    assert pixel[1] > pixel[2] and pixel[1] > pixel[0]
    assert structure[2] > structure[1] and structure[2] > structure[0]
    torch.testing.assert_close(structure.exp()[2], torch.tensor(0.25), atol=1e-5, rtol=0)
    assert ContentGate(structure_px=4).macs_per_region == 3 * 32 * 32 + 2 * 3 * 32 * 32 // 16
    with pytest.raises(ValueError, match='structure_px must divide coarse_patch_size=32'):
        ContentGate(structure_px=5)
    with pytest.raises(ValueError, match='structure_px must be None or a positive int'):
        ContentGate(structure_px=0)


def test_contrast_finds_the_border_of_a_texture_with_its_surrounds_mean_colour():
    """contrast=True adds the variance of the 4x4 cells' standard deviations: half stripes (2 px
    on, 2 px off, the flat half's mean colour) and half flat is invisible to the 4x4 averages
    but not to their contrast; a region all stripes has the same contrast in every cell."""
    from mmseg_msvit.models.gates import ContentGate
    stripes = torch.where((torch.arange(32) // 2) % 2 == 0, 1.0, -1.0)[None, None, None, :]
    img = torch.zeros(1, 3, 32, 96)
    img[..., 0:32] = stripes                       # region 0: all stripes
    img[..., 32:64] = stripes
    img[..., 48:64] = 0.0                          # region 1: stripes | flat, same mean
    img[..., 80:96] = 0.5                          # region 2: two flat areas
    structure = ContentGate(structure_px=4)(img)[0, 0].exp()
    both = ContentGate(structure_px=4, contrast=True)(img)[0, 0].exp()
    assert structure[0] < 1e-4 and structure[1] < 1e-4  # the averages see no stripes
    # region 1: half its cells have standard deviation 1, half 0: variance 1/4
    torch.testing.assert_close(both[1], torch.tensor(0.25), atol=1e-4, rtol=0)
    assert both[0] < 1e-4  # every cell the same contrast
    torch.testing.assert_close(both[2], structure[2], atol=1e-5, rtol=0)  # flat cells: as before
    assert ContentGate(structure_px=4, contrast=True).macs_per_region == \
        3 * (3 * 32 * 32) + 6 * (3 * 32 * 32 // 16)
    with pytest.raises(ValueError, match='contrast=True needs structure_px'):
        ContentGate(contrast=True)
    with pytest.raises(ValueError, match='contrast must be True or False'):
        ContentGate(structure_px=4, contrast='yes')
    # each cell's spread is taken about its own mean: a bright image (mean 50, as unnormalised
    # pixels) scores what the same detail scores at mean 0
    detail = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    gate = ContentGate(structure_px=4, contrast=True)
    torch.testing.assert_close(gate(detail + 50.0), gate(detail), atol=1e-4, rtol=0)


def test_content_gate_with_a_budget_needs_no_training():
    torch.manual_seed(4)
    model = tiny(gate=dict(type='ContentGate'), fine_budget=0.5).train()
    img = torch.zeros(1, 3, 64, 64)
    img[..., :32, :32] = torch.randn(3, 32, 32)  # only the top-left region has detail
    img[..., 32:, 32:] = torch.randn(3, 32, 32) * 0.1  # a little in the bottom-right
    (features, _) = model(img)
    assert features.fine_mask[0].tolist() == [[True, False], [False, True]]
    assert model.gate.macs_per_region == 2 * 3 * 32 * 32


def test_train_budget_range_draws_a_budget_per_training_batch_and_evaluates_at_the_budget():
    model = tiny(fine_budget=0.5, train_budget_range=(0.25, 1.0), out_indices=(1, ),
                 gate=dict(type='ContentGate'))
    img = torch.randn(3, 3, 128, 128)  # 16 regions
    torch.manual_seed(0)
    model.train()
    fine_counts = set()
    for _ in range(8):
        (features, ) = model(img)
        per_image = features.fine_mask.flatten(1).sum(1).tolist()
        assert len(set(per_image)) == 1  # one draw per batch: equal counts, never packed
        assert features.layout.packed is None
        assert 4 <= per_image[0] <= 16
        fine_counts.add(per_image[0])
    assert len(fine_counts) > 2  # the budget really varies from batch to batch
    model.eval()
    with torch.no_grad():
        (features, ) = model(img)
    assert features.fine_mask.flatten(1).sum(1).tolist() == [8, 8, 8]  # fine_budget 0.5
    for kwargs in (dict(fine_budget=None, train_budget_range=(0.2, 0.5)),
                   dict(fine_budget=0.5, train_budget_range=(0.6, 0.3)),
                   dict(fine_budget=0.5, train_budget_range=(0.0, 0.5)),
                   dict(fine_budget=0.5, train_budget_range=0.5)):
        with pytest.raises(ValueError, match='train_budget_range'):
            tiny(**kwargs)


def test_switching_gate_types_drops_the_other_gates_options_and_test_keeps_the_score():
    """--cfg-options model.backbone.gate.type=... merges into the configured gate's dict: the
    other shipped gate's options are dropped (a ContentGate's structure_px does not reach
    MixedScaleGate), and tools/test.py --content-gate keeps a content gate's own score."""
    from mmengine.config import Config

    from mmseg_msvit.apis import with_content_gate
    from mmseg_msvit.models import MSViT, MixedScaleGate
    learned = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                    gate=dict(type='MixedScaleGate', structure_px=4, hidden_dims=(8, )))
    assert type(learned.gate) is MixedScaleGate
    content = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                    gate=dict(type='ContentGate', structure_px=4, hidden_dims=(8, )))
    assert content.gate.structure_px == 4
    for gate, expected, contrast in ((dict(type='ContentGate', structure_px=4), 4, False),
                                     (dict(type='ContentGate', structure_px=4, contrast=True), 4,
                                      True),
                                     (dict(type='MixedScaleGate'), None, False)):
        cfg = Config(dict(model=dict(backbone=dict(type='MSViT', gate=gate))))
        gate = with_content_gate(cfg, 0.42).model.backbone.gate
        assert gate['type'] == 'ContentGate' and gate.get('structure_px') == expected
        assert gate.get('contrast', False) is contrast
