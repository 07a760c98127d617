"""Gate transfer: round trip, across widths, frozen vs fine-tuned, clear errors on mismatch."""
import copy
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper

from test_segmentor import build, make_batch, segmentor_cfg

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool():
    path = osp.join(REPO, 'tools', 'transfer_gate.py')
    spec = importlib.util.spec_from_file_location('transfer_gate', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def source_checkpoint(tmp_path_factory):
    """A trained-for-one-step segmentor checkpoint, with its config text in the meta."""
    torch.manual_seed(0)
    cfg = segmentor_cfg()
    model = build(cfg).train()
    model.train_step(make_batch(), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1)))
    path = tmp_path_factory.mktemp('transfer') / 'seg.pth'
    cfg_text = Config(dict(model=cfg)).pretty_text
    torch.save({'state_dict': model.state_dict(), 'meta': {'cfg': cfg_text}}, path)
    return path, model


def test_round_trip_into_another_width(source_checkpoint, tmp_path):
    path, source = source_checkpoint
    gate_path = tmp_path / 'gate.pth'
    gate = load_tool().main([str(path), str(gate_path), '--include-prior'])
    assert gate['meta']['coarse_patch_size'] == 32 and gate['meta']['fine_patch_size'] == 16
    assert gate['meta']['mean'] == [123.675, 116.28, 103.53] and gate['meta']['bgr_to_rgb']
    assert set(gate['gbas_prior']) == {'mu_logit', 'tau_logit'}
    # another width (96 instead of 48): the gate reads pixels
    cfg = segmentor_cfg()
    cfg['backbone'] = dict(cfg['backbone'], arch=dict(embed_dims=96, depth=2, num_heads=3),
                           gate_init=dict(checkpoint=str(gate_path)))
    cfg['decode_head'] = dict(cfg['decode_head'], in_channels=96)
    cfg['auxiliary_head'] = dict(cfg['auxiliary_head'], in_channels=96)
    target = build(cfg)
    for key, value in source.backbone.gate.state_dict().items():
        torch.testing.assert_close(target.backbone.gate.state_dict()[key], value)
    # the transferred gate makes the same decisions on the same images at step 0
    target.eval(), source.eval()
    data = target.data_preprocessor(make_batch(seed=3), False)
    with torch.no_grad():
        target_layout = target.backbone(data['inputs'])[0].layout
        source_layout = source.backbone(data['inputs'])[0].layout
    assert torch.equal(target_layout.fine_mask, source_layout.fine_mask)


@pytest.mark.parametrize('freeze', [True, False])
def test_frozen_gate_stays_fine_tuned_gate_changes(source_checkpoint, tmp_path, freeze):
    path, _ = source_checkpoint
    gate_path = tmp_path / 'gate.pth'
    load_tool().main([str(path), str(gate_path)])
    cfg = segmentor_cfg()
    cfg['backbone'] = dict(cfg['backbone'], gate_init=dict(checkpoint=str(gate_path),
                                                          freeze=freeze))
    model = build(cfg).train()
    before = copy.deepcopy(model.backbone.gate.state_dict())
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    for seed in range(2):
        model.train_step(make_batch(seed=seed), optim)
    changed = [not torch.equal(v, before[k]) for k, v in model.backbone.gate.state_dict().items()]
    assert (not any(changed)) if freeze else all(changed)


def test_mismatches_are_refused(source_checkpoint, tmp_path):
    path, _ = source_checkpoint
    gate_path = tmp_path / 'gate.pth'
    load_tool().main([str(path), str(gate_path)])
    cfg = segmentor_cfg()
    cfg['data_preprocessor'] = dict(cfg['data_preprocessor'], mean=[127.5] * 3, std=[127.5] * 3)
    cfg['backbone'] = dict(cfg['backbone'], gate_init=dict(checkpoint=str(gate_path)))
    with pytest.raises(ValueError, match=r'does not fit this model: mean: gate \[123.675'):
        build(cfg)
    cfg = segmentor_cfg()
    cfg['backbone'] = dict(cfg['backbone'], coarse_patch_size=48,
                           gate_init=dict(checkpoint=str(gate_path)))
    cfg['backbone']['img_size'] = 96
    cfg['gate_loss'] = None
    with pytest.raises(ValueError, match='coarse_patch_size: gate 32, model 48'):
        build(cfg)
    cfg = segmentor_cfg()
    cfg['backbone'] = dict(cfg['backbone'], gate=dict(type='MixedScaleGate', hidden_dims=(8, )),
                           gate_init=dict(checkpoint=str(gate_path)))
    with pytest.raises(ValueError, match='hidden_dims'):
        build(cfg)
    bare = tmp_path / 'bare.pth'
    torch.save({'state_dict': torch.load(path, weights_only=True)['state_dict']}, bare)
    with pytest.raises(ValueError, match='normalisation .* is unknown'):
        load_tool().main([str(bare), str(tmp_path / 'g.pth')])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_tool().main([str(tmp_path / 'nope.pth'), str(tmp_path / 'g.pth')])


def _bare_gate_checkpoint(path, hidden_dims=(8, 8, 8, 8, 8)):
    """A tiny checkpoint with only a gate and a patch embedding (no config in its meta)."""
    from mmseg_msvit.models import MixedScaleGate
    torch.manual_seed(0)
    gate = MixedScaleGate(hidden_dims=hidden_dims)
    state = {f'backbone.gate.{k}': v for k, v in gate.state_dict().items()}
    state['backbone.patch_embed.proj.weight'] = torch.zeros(4, 3, 16, 16)
    torch.save({'state_dict': state}, path)
    return gate


NORMALISATION = ['--mean', '123.675', '116.28', '103.53', '--std', '58.395', '57.12', '57.375',
                 '--bgr-to-rgb']


def test_deep_gate_records_hidden_dims_in_layer_order(tmp_path):
    from mmseg_msvit.models import MixedScaleGate
    src = tmp_path / 'deep.pth'
    source = _bare_gate_checkpoint(src)
    gate = load_tool().main([str(src), str(tmp_path / 'gate.pth'), *NORMALISATION])
    assert gate['meta']['hidden_dims'] == [8, 8, 8, 8, 8]
    assert gate['meta']['coarse_patch_size'] == 32 and gate['meta']['in_channels'] == 3
    rebuilt = MixedScaleGate(hidden_dims=gate['meta']['hidden_dims'])
    rebuilt.load_state_dict(gate['state_dict'])
    img = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(rebuilt(img), source(img))
    # distinct widths: the order must be the layers' (0, 2, 4, ..., 10), not text order
    src = tmp_path / 'widths.pth'
    _bare_gate_checkpoint(src, hidden_dims=(9, 8, 7, 6, 5))
    gate = load_tool().main([str(src), str(tmp_path / 'gate2.pth'), *NORMALISATION])
    assert gate['meta']['hidden_dims'] == [9, 8, 7, 6, 5]


@pytest.mark.parametrize('override, match', [
    (['--std', '0', '0', '0'], r'std must be .*> 0.*got \[0.0, 0.0, 0.0\]'),
    (['--std', '58', '-1', '57'], r'std must be .*> 0.*got \[58.0, -1.0, 57.0\]'),
    (['--std', '58', 'inf', '57'], r'std must be .*finite.*got \[58.0, inf, 57.0\]'),
    (['--std', '58', 'nan', '57'], r'std must be .*got \[58.0, nan, 57.0\]'),
    (['--std', '58', '57'], r'std must hold 3 values .*in_channels.*got \[58.0, 57.0\]'),
    (['--mean', '1', '2'], r'mean must hold 3 values .*in_channels.*got \[1.0, 2.0\]'),
    (['--mean', '1', 'nan', '2'], r'mean must be finite.*got \[1.0, nan, 2.0\]'),
])
def test_bad_normalisation_overrides_are_refused(tmp_path, override, match):
    src = tmp_path / 'gate_src.pth'
    _bare_gate_checkpoint(src, hidden_dims=(8, ))
    with pytest.raises(ValueError, match=match):
        load_tool().main([str(src), str(tmp_path / 'gate.pth'), *NORMALISATION, *override])
    assert not (tmp_path / 'gate.pth').exists()


def test_normalisation_is_the_models_own_preprocessor():
    """The model's data_preprocessor (e.g. overridden with --cfg-options) wins over the
    top-level variable that configs define first; the text is parsed, never run."""
    from mmengine.config import Config

    from mmseg_msvit.models.checkpoints import normalisation_from_cfg_text
    top = dict(type='SegDataPreProcessor', mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0],
               bgr_to_rgb=True)
    own = dict(top, mean=[10.0, 20.0, 30.0], bgr_to_rgb=False)
    text = Config(dict(data_preprocessor=top, model=dict(type='X', data_preprocessor=own))
                  ).pretty_text
    assert text.index('data_preprocessor = dict') < text.index('model = dict')  # top first
    assert normalisation_from_cfg_text(text) == dict(mean=[10.0, 20.0, 30.0],
                                                     std=[4.0, 5.0, 6.0], bgr_to_rgb=False)
    # mmpretrain configs keep only the top-level one
    only_top = Config(dict(data_preprocessor=top, model=dict(type='X'))).pretty_text
    assert normalisation_from_cfg_text(only_top)['mean'] == [1.0, 2.0, 3.0]
    assert normalisation_from_cfg_text("model = dict(type='X')") is None
