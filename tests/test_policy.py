"""The scale policy travels per call: an immutable ScalePolicy in, one ScaleDecision out, and the
model is never changed by a call that uses another rule."""
import dataclasses
import os
import os.path as osp
import re
import warnings

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.optim import OptimWrapper

from mmseg_msvit.analysis import backbone_macs, count_macs_with_mmengine
from mmseg_msvit.models import ContentGate, MSViT, ScaleDecision, ScalePolicy
from mmseg_msvit.models.policy import is_counting_one_forward
from test_segmentor import build, make_batch, segmentor_cfg


def tiny(**kwargs):
    kwargs.setdefault('gate', dict(type='MixedScaleGate', hidden_dims=(16, )))
    return MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64, **kwargs)


def config_of(backbone):
    policy = backbone.policy
    return (policy, backbone.gate, backbone.force_scale, backbone.fine_budget,
            backbone.gate_threshold)


def test_a_policy_is_immutable_and_checked_on_construction():
    policy = ScalePolicy.with_budget(0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.budget = 0.3
    assert policy.replace(budget=0.3).budget == 0.3 and policy.budget == 0.5
    assert [ScalePolicy.forced('fine').mode, policy.mode, ScalePolicy.with_threshold(0.7).mode,
            ScalePolicy.given(torch.ones(1, 2, 2, dtype=torch.bool)).mode] == \
        ['forced', 'budget', 'threshold', 'given']
    for bad, match in ((dict(force_scale='dense'), "force_scale must be None, 'fine'"),
                       (dict(budget=1.5), 'fine_budget must be None'),
                       (dict(threshold=-0.1), 'gate_threshold must be a number in'),
                       (dict(fine_mask=torch.ones(1, 2, 2)), 'fine_mask must be a bool'),
                       (dict(fine_value=torch.ones(1, 2, 2)), 'fine_value needs a fine_mask'),
                       (dict(train_budget_range=(0.8, 0.2)), 'train_budget_range must be')):
        with pytest.raises(ValueError, match=match):
            ScalePolicy(**bad)
    # one mode per policy: fields of two modes are refused, never resolved by precedence
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    for mixed in (dict(force_scale='fine', budget=0.5), dict(budget=0.5, threshold=0.3),
                  dict(fine_mask=mask, gate=ContentGate()), dict(force_scale='coarse',
                                                                 gate=ContentGate()),
                  dict(fine_mask=mask, force_scale='fine'), dict(threshold=0.3,
                                                                 train_budget_range=(0.2, 0.4))):
        with pytest.raises(ValueError, match='one mode per policy|needs a fine_budget'):
            ScalePolicy(**mixed)
    assert ScalePolicy.with_threshold().decision_threshold == 0.5
    with pytest.raises(ValueError, match='one mode per policy'):
        ScalePolicy.with_budget(0.5).replace(force_scale='fine')
    with pytest.raises(TypeError, match='policy must be a ScalePolicy'):
        tiny()(torch.randn(1, 3, 64, 64), 'fine')
    with pytest.raises(ValueError, match='train_budget_range.*needs a fine_budget'):
        tiny(train_budget_range=(0.2, 0.8))
    with pytest.raises(ValueError, match="policy's gate ContentGate has ratio=4"):
        tiny()(torch.randn(1, 3, 64, 64), ScalePolicy.with_budget(
            0.5, gate=ContentGate(fine_patch_size=8)))


def test_a_call_with_its_own_policy_leaves_the_backbone_as_configured():
    torch.manual_seed(0)
    model = tiny(fine_budget=0.5).eval()
    before = config_of(model)
    img = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        dense = model(img, ScalePolicy.forced('fine'))[0].layout
        content = model(img, ScalePolicy.with_budget(0.25, gate=ContentGate()))[0].layout
        own = model(img)[0].layout
    assert config_of(model)[1:] == before[1:] and model.policy is before[0]
    assert dense.num_tokens.tolist() == [24, 24] and dense.gate_logits is None
    assert content.fine_mask.flatten(1).sum(1).tolist() == [2, 2]  # round(0.25 * 6) half up
    assert own.fine_mask.flatten(1).sum(1).tolist() == [3, 3]
    # the cost is the gate's that ran: the content gate's, not the backbone's MLP
    assert content.gate_macs_per_region == ContentGate().macs_per_region
    assert float(backbone_macs(model, img, policy=ScalePolicy.with_budget(
        0.25, gate=ContentGate()))[0]) < float(backbone_macs(model, img)[0])


def test_the_decision_holds_mask_value_logits_and_the_token_count_once():
    torch.manual_seed(1)
    model = tiny().train()
    padded, _ = model.pad_input(torch.randn(3, 3, 64, 96))
    decision = model.decide_scales(padded)
    assert isinstance(decision, ScaleDecision)
    assert decision.fine_value.requires_grad and decision.gate_logits.shape == (3, 2, 3)
    assert decision.static_num_tokens is None  # threshold mode: counts depend on the image
    assert decision.num_tokens.tolist() == (6 + 3 * decision.fine_mask.flatten(1).sum(1)).tolist()
    tokens = model.embed(padded, decision)
    assert tokens.layout.decision is decision  # the layout carries it, no copy
    assert torch.equal(tokens.layout.num_tokens, decision.num_tokens)
    assert tokens.layout.static_fine_regions is None
    budget = model.decide_scales(padded, ScalePolicy.with_budget(0.5))
    assert budget.static_num_tokens == 6 + 3 * 3
    assert model.embed(padded, budget).layout.static_fine_regions == 3
    coarse = model.decide_scales(padded, ScalePolicy.forced('coarse'))
    assert coarse.static_num_tokens == 6
    assert model.embed(padded, coarse).layout.static_fine_regions == 0


def test_config_setters_replace_the_whole_default_policy():
    model = tiny(fine_budget=0.5, train_budget_range=(0.25, 1.0))
    first = model.policy
    model.fine_budget = 0.3
    assert model.policy is not first and first.budget == 0.5
    assert model.policy.budget == 0.3 and model.train_budget_range == (0.25, 1.0)
    model.fine_budget = None  # threshold mode: the training range stays, inert
    assert model.policy.mode == 'threshold' and model.train_budget_range == (0.25, 1.0)
    model.fine_budget = 0.5
    model.train_budget_range = None
    assert model.policy.train_budget_range is None and model.fine_budget == 0.5
    model.gate_threshold = 0.7
    model.force_scale = 'coarse'
    # the forced policy holds no threshold; the config keeps it for when the force is lifted
    assert (model.gate_threshold, model.policy.mode, model.policy.threshold) == \
        (0.7, 'forced', None)
    model.force_scale = None
    assert (model.policy.mode, model.policy.budget) == ('budget', 0.5)
    model.fine_budget = None
    assert (model.policy.mode, model.policy.threshold) == ('threshold', 0.7)
    with pytest.raises(ValueError, match='gate_threshold must be a number in'):
        model.gate_threshold = 2.0
    assert model.gate_threshold == 0.7 and model.policy.threshold == 0.7  # unchanged


def test_a_training_forward_draws_once_from_the_models_range_whatever_the_policy():
    """The random numbers after a forward are those of earlier versions (recorded runs
    reproduce): one draw per training forward of a backbone with train_budget_range."""
    model = tiny(fine_budget=0.5, train_budget_range=(0.25, 1.0)).train()
    img = torch.randn(2, 3, 64, 64)
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    torch.manual_seed(0)
    torch.rand(())
    expected = torch.rand(())
    for policy in (ScalePolicy.given(mask), ScalePolicy.forced('fine')):
        torch.manual_seed(0)
        model(img, policy)
        assert torch.equal(torch.rand(()), expected)
    plain = tiny(fine_budget=0.5).train()  # no range: no draw
    torch.manual_seed(0)
    plain(img, ScalePolicy.given(mask))
    after = torch.rand(())
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(()))


def test_segmentor_predict_takes_a_policy_for_that_call_only():
    torch.manual_seed(0)
    budget = dict(segmentor_cfg()['backbone'], fine_budget=0.5)
    model = build(segmentor_cfg(gate_loss=None, backbone=budget)).eval()
    data = model.data_preprocessor(make_batch(), False)
    before = config_of(model.backbone)
    def run(segmentor, policy=None):  # predict writes into the samples: read them at once
        with torch.no_grad():
            out = segmentor.predict(data['inputs'], data['data_samples'], policy)
        return [(s.seg_logits.data.clone(), s.msvit_fine_fraction) for s in out]

    dense = run(model, ScalePolicy.forced('fine'))
    own = run(model)
    configured = build(segmentor_cfg(gate_loss=None, backbone=dict(
        budget, force_scale='fine'))).eval()
    configured.load_state_dict(model.state_dict())
    reference = run(configured)
    assert config_of(model.backbone)[1:] == before[1:]
    for (ours, fraction), (theirs, _) in zip(dense, reference):
        torch.testing.assert_close(ours, theirs)
        assert fraction == 1.0
    assert [fraction for _, fraction in own] == [0.5, 0.5]
    # slide inference passes it to every window
    model.test_cfg = ConfigDict(mode='slide', crop_size=(64, 64), stride=(32, 32))
    with torch.no_grad():
        (slide, ) = model.predict(data['inputs'][:1], data['data_samples'][:1],
                                  ScalePolicy.forced('coarse'))
    assert slide.msvit_fine_fraction == 0.0


def test_the_wrapper_that_owns_the_losses_owns_the_untrained_gate_warning():
    cfg = segmentor_cfg(gate_loss=None)
    model = build(cfg).train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model.train_step(make_batch(), optim)
        model.train_step(make_batch(seed=1), optim)  # once only
    messages = [str(w.message) for w in caught if 'no gate loss' in str(w.message)]
    assert len(messages) == 1 and 'MSViTEncoderDecoder' in messages[0]
    assert 'gate_loss=' in messages[0]
    # the dense teacher's copy of the backbone and evaluation never warn
    trained = build(segmentor_cfg()).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        trained.train_step(make_batch(), OptimWrapper(torch.optim.SGD(trained.parameters(),
                                                                      lr=0.01)))
    assert not [w for w in caught if 'no gate loss' in str(w.message)]


def test_mmengine_counter_counts_one_threshold_forward_but_export_still_refuses():
    torch.manual_seed(0)
    model = tiny().eval()
    for block in model.blocks:
        block.attn.fused_attn = False
    img = torch.randn(1, 3, 64, 64)
    counted = count_macs_with_mmengine(model, (img, ), lambda f: tuple(x.tokens for x in f))
    assert abs(counted - float(backbone_macs(model, img)[0])) / counted < 0.01
    assert not is_counting_one_forward()  # the counter's leave ended with the count
    with pytest.raises(RuntimeError, match='threshold mode'):
        torch.export.export(model, (img, ))


def test_structural_arguments_are_checked_in_one_place():
    # mmseg's ViT takes norm_eval at either value and it changes nothing (LayerNorm only)
    for value in (True, False):
        model = tiny(norm_eval=value).train()
        assert model.training and all(m.training for m in model.modules())
    with pytest.raises(ValueError, match='norm_eval must be True or False'):
        tiny(norm_eval='yes')
    with pytest.raises(ValueError, match='gate_init needs a checkpoint'):
        tiny(gate_init=dict(checkpoint='gate.pth', frozen=True))
    with pytest.raises(ValueError, match='gate_init.freeze must be True or False'):
        tiny(gate_init=dict(checkpoint='gate.pth', freeze='yes'))
    with pytest.raises(ValueError, match='token_packing must be True or False'):
        tiny(token_packing=1)


def test_training_the_gate_alone_goes_through_the_backbones_one_freeze():
    model = tiny()
    model.freeze_all_but_gate()
    model.train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith('gate.') for name in trainable)
    assert model.gate.training and not any(b.training for b in model.blocks)
    with pytest.raises(ValueError, match='training the gate alone needs'):
        tiny(force_scale='fine').freeze_all_but_gate()


def test_the_readme_policy_example_runs_as_written_and_changes_nothing():
    readme = open(osp.join(osp.dirname(osp.dirname(__file__)), 'README.md'),
                  encoding='utf-8').read()
    code = re.search(r'<!-- policy-example-start -->\n```python\n(.*?)```', readme,
                     re.S).group(1)
    model = build(segmentor_cfg(gate_loss=None)).eval()
    data = model.data_preprocessor(make_batch(), False)
    before = config_of(model.backbone)
    scope = dict(model=model, inputs=data['inputs'], data_samples=data['data_samples'],
                 fine_mask=torch.ones(2, 2, 2, dtype=torch.bool))
    with torch.no_grad():
        exec(compile(code, 'README.md', 'exec'), scope)  # noqa: S102
    assert config_of(model.backbone)[1:] == before[1:] and model.backbone.policy is before[0]


def test_models_import_nothing_from_analysis_engine_or_tools():
    """Layering: analysis/, engine/ and tools/ build on models/, never the other way round."""
    import ast
    import glob
    root = osp.dirname(osp.dirname(__file__))
    offending = []
    for path in glob.glob(osp.join(root, 'mmseg_msvit', 'models', '**', '*.py'), recursive=True):
        package = osp.relpath(osp.dirname(path), root).split(os.sep)  # mmseg_msvit, models, ...
        for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                names = ['.'.join(base + ([node.module] if node.module else []))]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            offending += [(osp.relpath(path, root), name) for name in names
                          if name.startswith(('mmseg_msvit.analysis', 'mmseg_msvit.engine',
                                              'tools'))]
    assert not offending, offending


def test_policy_edges_are_refused_with_the_reason():
    """fine_value must equal fine_mask (a float that carries the gradient); a gate's logits must
    be one finite value per region; a substitute gate must say its cost."""
    import pytest
    from mmseg_msvit.models import MSViT, ScalePolicy
    mask = torch.tensor([[[True, False], [False, True]]])
    for bad in (mask.long(), torch.full((1, 2, 2), float('nan')), mask.float() * 5,
                (~mask).float()):
        with pytest.raises(ValueError, match='fine_value must be a floating-point tensor EQUAL'):
            ScalePolicy.given(mask, bad)
    ScalePolicy.given(mask, mask.float().requires_grad_())  # the right one is accepted
    backbone = MSViT(arch=dict(embed_dims=32, depth=1, num_heads=2), img_size=64).eval()
    img = torch.randn(1, 3, 64, 64)

    class NaNGate(torch.nn.Module):
        coarse_patch_size, in_channels, macs_per_region, temperature = 32, 3, 0, None

        def forward(self, x):
            return torch.full((x.shape[0], 2, 2), float('nan'))

    class WrongShape(NaNGate):

        def forward(self, x):
            return torch.zeros(x.shape[0], 4)

    class NoCost(torch.nn.Module):
        coarse_patch_size, in_channels = 32, 3

        def forward(self, x):
            return torch.zeros(x.shape[0], 2, 2)

    with pytest.raises(FloatingPointError, match='NaNGate returned 4 non-finite logits'):
        backbone(img, ScalePolicy.with_budget(0.5, gate=NaNGate()))
    with pytest.raises(ValueError, match=r'WrongShape returned logits of shape \(1, 4\).*'
                                         r'\(1, 2, 2\)'):
        backbone(img, ScalePolicy.with_threshold(0.5, gate=WrongShape()))
    with pytest.raises(ValueError, match='NoCost has no integer macs_per_region'):
        backbone(img, ScalePolicy.with_budget(0.5, gate=NoCost()))

    class NoTemperature(NoCost):
        macs_per_region = 0

    with pytest.raises(ValueError, match='NoTemperature has no temperature attribute'):
        backbone(img, ScalePolicy.with_budget(0.5, gate=NoTemperature()))
