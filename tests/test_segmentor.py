"""MSViTEncoderDecoder: gate loss in training, statistics in whole and slide inference."""
import copy

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_msvit.analysis import backbone_macs
from mmseg_msvit.models import ScalePolicy

NUM_CLASSES = 4


def segmentor_cfg(**overrides):
    cfg = dict(
        type='MSViTEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(64, 64)),
        backbone=dict(type='MSViT', arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                      out_indices=(0, 1), gate=dict(type='MixedScaleGate', hidden_dims=(16, ))),
        neck=dict(type='MixedScaleToDense'),
        decode_head=dict(type='FCNHead', in_channels=48, in_index=1, channels=32, num_convs=1,
                         num_classes=NUM_CLASSES, norm_cfg=dict(type='BN'),
                         loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        auxiliary_head=dict(type='FCNHead', in_channels=48, in_index=0, channels=16,
                            num_convs=1, num_classes=NUM_CLASSES,
                            loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
        gate_loss=dict(type='GBaSLoss', grid_size=(2, 2), target=0.5),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'))
    cfg.update(overrides)
    return cfg


def build(cfg):
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(ConfigDict(cfg))
    model.init_weights()
    return model


def make_batch(num=2, size=(64, 64), seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(num):
        inputs.append(torch.randint(0, 256, (3, *size), generator=gen, dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, NUM_CLASSES, (1, *size), generator=gen))
        sample.set_metainfo(dict(img_shape=size, ori_shape=size, pad_shape=size))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_one_training_iteration_updates_gate_and_prior():
    torch.manual_seed(0)
    model = build(segmentor_cfg())
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    gate_before = copy.deepcopy(model.backbone.gate.state_dict())
    prior_before = copy.deepcopy(model.gate_loss.state_dict())
    log_vars = {k: float(v) for k, v in model.train_step(make_batch(), optim).items()}
    for key in ('loss', 'decode.loss_ce', 'aux.loss_ce', 'loss_gate', 'gate.fine_fraction',
                'gate.tokens_per_image'):
        assert key in log_vars, key
    assert log_vars['loss'] == pytest.approx(
        log_vars['decode.loss_ce'] + log_vars['aux.loss_ce'] + log_vars['loss_gate'], rel=1e-5)
    assert 0.0 <= log_vars['gate.fine_fraction'] <= 1.0
    assert 4 <= log_vars['gate.tokens_per_image'] <= 16  # 4 regions: 1 or 4 tokens each
    for key, value in model.backbone.gate.state_dict().items():
        assert not torch.equal(value, gate_before[key]), f'gate {key} did not change'
    for key, value in model.gate_loss.state_dict().items():
        assert not torch.equal(value, prior_before[key]), f'prior {key} did not change'


def test_forced_scale_trains_without_gate_loss():
    forced = dict(type='MSViT', arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                  out_indices=(0, 1), force_scale='fine')
    # the gate never runs with a forced scale: a gate loss would train nothing (and its GBaS
    # prior, without gradient, would stop DistributedDataParallel)
    with pytest.raises(ValueError, match=r"force_scale='fine'.*model.gate_loss=None"):
        build(segmentor_cfg(backbone=forced))
    model = build(segmentor_cfg(backbone=forced, gate_loss=None))
    assert not any(p.requires_grad for p in model.backbone.gate.parameters())
    model.train()
    log_vars = {k: float(v) for k, v in model.train_step(make_batch(), OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=0.1))).items()}
    assert 'loss_gate' not in log_vars
    assert log_vars['gate.fine_fraction'] == 1.0 and log_vars['gate.tokens_per_image'] == 16


def test_whole_inference_reports_cost_per_image():
    torch.manual_seed(1)
    model = build(segmentor_cfg()).eval()
    data = model.data_preprocessor(make_batch(seed=1), False)
    with torch.no_grad():
        results = model.predict(data['inputs'], data['data_samples'])
        expected = backbone_macs(model.backbone, data['inputs'])
        layout = model.backbone(data['inputs'])[0].layout
    for index, sample in enumerate(results):
        assert sample.pred_sem_seg.data.shape == (1, 64, 64)
        assert sample.metainfo['msvit_backbone_macs'] == pytest.approx(float(expected[index]))
        fine = layout.fine_mask[index].float().mean().item()
        assert sample.metainfo['msvit_fine_fraction'] == pytest.approx(fine)
        assert sample.metainfo['msvit_num_tokens'] == float(layout.num_tokens[index])


def test_slide_inference_counts_every_window():
    torch.manual_seed(2)
    cfg = segmentor_cfg(test_cfg=dict(mode='slide', crop_size=(64, 64), stride=(32, 32)))
    cfg['data_preprocessor']['size'] = None
    cfg['data_preprocessor']['size_divisor'] = 32
    model = build(cfg).eval()
    data = model.data_preprocessor(make_batch(num=1, size=(96, 96), seed=2), False)
    inputs = data['inputs']
    with torch.no_grad():
        results = model.predict(inputs, data['data_samples'])
        windows = [inputs[:, :, y:y + 64, x:x + 64] for y in (0, 32) for x in (0, 32)]
        expected = sum(float(backbone_macs(model.backbone, w)[0]) for w in windows)
    assert results[0].pred_sem_seg.data.shape == (1, 96, 96)
    assert results[0].metainfo['msvit_backbone_macs'] == pytest.approx(expected)


def test_rejects_a_backbone_that_is_not_msvit():
    cfg = segmentor_cfg(backbone=dict(type='ResNetV1c', depth=18), neck=None)
    with pytest.raises(TypeError, match='not an MSViT'):
        build(cfg)


def test_gate_probe_labels_the_top_target_share_fine():
    from mmseg_msvit.models.gate_training import probe_labels
    benefit = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    assert probe_labels(benefit, 0.5).tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert probe_labels(benefit, 0.25).tolist() == [[0.0, 0.0], [1.0, 0.0]]
    assert probe_labels(benefit, 1.0).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert probe_labels(benefit, 0.0).sum() == 0


def test_gate_probe_trains_the_gate_and_leaves_the_rest_as_it_was():
    torch.manual_seed(0)
    model = build(segmentor_cfg(gate_probe=dict(type='GateProbe', num_images=2,
                                                regions_per_image=3)))
    model.train()
    data = model.data_preprocessor(make_batch(), True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert 'loss_gate_probe' in losses and float(losses['loss_gate_probe']) > 0
    # the probe's extra forwards leave the BatchNorm statistics alone
    layout = model.backbone(data['inputs'])[0].layout
    norm = model.decode_head.convs[0].bn
    running = norm.running_mean.clone()
    probe = model.gate_probe(model, data['inputs'], data['data_samples'], layout, 0.5)
    assert torch.equal(norm.running_mean, running) and norm.momentum == 0.1
    model.zero_grad(set_to_none=True)
    probe.backward()
    assert all(p.grad is not None for p in model.backbone.gate.parameters())
    assert model.backbone.blocks[0].attn.qkv.weight.grad is None  # no gradient into the ViT
    # a dict without type is a GateProbe config too; bad settings are refused by name
    assert type(build(segmentor_cfg(gate_probe=dict(num_images=1))).gate_probe).__name__ == \
        'GateProbe'
    with pytest.raises(TypeError, match='images'):
        build(segmentor_cfg(gate_probe=dict(images=2)))
    with pytest.raises(ValueError, match='regions_per_image must be an int >= 1'):
        build(segmentor_cfg(gate_probe=dict(regions_per_image=0)))


def test_task_loss_per_image_is_the_decode_heads_own_loss():
    torch.manual_seed(4)
    model = build(segmentor_cfg()).eval()
    data = model.data_preprocessor(make_batch(), True)
    inputs, samples = data['inputs'], data['data_samples']
    mask = torch.ones(len(samples), 2, 2, dtype=torch.bool)
    per_image = model.task_loss_per_image(inputs, samples, mask)
    with torch.no_grad():
        seg_logits = model.decode_head.forward(
            model.extract_feat_and_layout(inputs, ScalePolicy.given(mask))[0])
    for index, sample in enumerate(samples):
        head = model.decode_head.loss_by_feat(seg_logits[index:index + 1], [sample])
        assert float(per_image[index]) == pytest.approx(float(head['loss_ce']), rel=1e-5)


@torch.no_grad()
def test_featmap_backbone_feeds_mmseg_necks_and_heads_directly():
    """MSViT(out_type='featmap'): dense maps in a tuple that carries the layout; the same maps
    as MixedScaleToDense rebuilds; mmseg's own MultiLevelNeck, or no neck at all, reads them, and
    predictions still carry the cost read from the layout."""
    from mmseg_msvit.models import MixedScaleMaps, layout_of
    torch.manual_seed(0)
    tokens_model = build(segmentor_cfg(gate_loss=None))
    backbone_cfg = dict(segmentor_cfg()['backbone'], out_type='featmap')
    featmap_model = build(segmentor_cfg(backbone=backbone_cfg, gate_loss=None))
    featmap_model.load_state_dict(tokens_model.state_dict())
    tokens_model.eval(), featmap_model.eval()
    img = torch.randn(2, 3, 64, 96)
    maps = featmap_model.backbone(img)
    assert isinstance(maps, MixedScaleMaps) and len(maps) == 2
    assert all(isinstance(m, torch.Tensor) and m.shape == (2, 48, 4, 6) for m in maps)
    expected = tokens_model.neck.dense_maps(tokens_model.backbone(img))
    for ours, theirs in zip(maps, expected):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(layout_of(maps).fine_mask,
                               layout_of(tokens_model.backbone(img)).fine_mask)
    # the mixed-scale neck reads either form
    for ours, theirs in zip(featmap_model.neck(maps), expected):
        torch.testing.assert_close(ours, theirs)
    # mmseg's stock neck, and no neck: built, trained one step, predicting with the cost
    stock = dict(type='MultiLevelNeck', in_channels=[48, 48], out_channels=48, scales=[2, 1])
    for neck in (stock, None):
        model = build(segmentor_cfg(backbone=backbone_cfg, neck=neck, gate_loss=None))
        data = model.data_preprocessor(make_batch(), True)
        model.train()
        losses = model.loss(data['inputs'], data['data_samples'])
        assert losses['decode.loss_ce'] > 0
        model.eval()
        result = model.predict(data['inputs'], data['data_samples'])[0]
        assert result.pred_sem_seg.shape == (64, 64)
        assert result.msvit_backbone_macs > 0
        assert result.msvit_fine_fraction == result.msvit_fine_mask.float().mean().item()
    # budget mode exports the featmap backbone too: the maps and the layout come back
    budget = featmap_model.backbone
    budget.fine_budget = 0.5
    exported = torch.export.export(budget, (img, )).module()(img)
    reference = budget(img)
    assert isinstance(exported, MixedScaleMaps)
    for ours, theirs in zip(exported, reference):
        torch.testing.assert_close(ours, theirs)
    assert torch.equal(exported.layout.fine_mask, reference.layout.fine_mask)
    with pytest.raises(ValueError, match="out_type must be 'tokens'"):
        build(segmentor_cfg(backbone=dict(backbone_cfg, out_type='maps')))
    with pytest.raises(ValueError, match="out_type='featmap'"):
        build(segmentor_cfg(neck=None))
