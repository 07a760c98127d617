"""MSViTImageClassifier: registered in mmpretrain, CLS token to the head, gate loss logged."""
import copy

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample


def classifier_cfg(**overrides):
    cfg = dict(
        type='MSViTImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=5,
                               mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               to_rgb=True),
        backbone=dict(type='MSViT', arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                      gate=dict(type='MixedScaleGate', hidden_dims=(16, ))),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=48,
                  loss=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        gate_loss=dict(type='GBaSLoss', grid_size=(2, 2), target=0.5))
    cfg.update(overrides)
    return cfg


def build(cfg):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(ConfigDict(cfg))
    model.init_weights()
    return model


def batch(num=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randint(0, 256, (3, 64, 64), generator=gen, dtype=torch.uint8)
              for _ in range(num)]
    samples = [DataSample().set_gt_label(int(torch.randint(0, 5, (1, ), generator=gen)))
               for _ in range(num)]
    return dict(inputs=inputs, data_samples=samples)


def test_one_step_trains_head_gate_and_prior():
    torch.manual_seed(0)
    model = build(classifier_cfg()).train()
    gate_before = copy.deepcopy(model.backbone.gate.state_dict())
    data = model.data_preprocessor(batch(), True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert {'loss', 'loss_gate', 'gate.fine_fraction', 'gate.tokens_per_image'} <= set(losses)
    total, log_vars = model.parse_losses(losses)
    assert float(total) == pytest.approx(float(losses['loss'] + losses['loss_gate']))
    assert 4 <= float(losses['gate.tokens_per_image']) <= 16  # 4 regions: 1 or 4 tokens each
    model.train_step(batch(), OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1)))
    assert any(not torch.equal(v, gate_before[k])
               for k, v in model.backbone.gate.state_dict().items())
    from mmseg_msvit.models.checkpoints import input_normalisation
    assert input_normalisation(model.data_preprocessor)['bgr_to_rgb'] is True


def test_head_sees_the_cls_token_and_predicts():
    model = build(classifier_cfg(gate_loss=None)).eval()
    data = model.data_preprocessor(batch(num=2, seed=1), False)
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
        (cls_token, ) = feats
        assert cls_token.shape == (2, 48)
        (features, ) = model.extract_feat(data['inputs'], stage='backbone')
        torch.testing.assert_close(cls_token, features.cls_token)
        results = model.predict(data['inputs'], data['data_samples'])
    assert results[0].pred_score.shape == (5, )


def test_rejects_other_backbones():
    cfg = classifier_cfg(backbone=dict(type='ResNet', depth=18))
    with pytest.raises(TypeError, match='must be an MSViT'):
        build(cfg)
