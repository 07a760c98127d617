"""A trained mmseg ViT segmentor (made with mmseg's own classes) becomes a mixed-scale model in one
call or one command, whole; with every region fine it predicts what mmseg's model predicts. A
checkpoint that does not cover a model is refused on every load path, naming the converter."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmseg_msvit.apis import init_from_mmseg, init_mixed_scale_model
from mmseg_msvit.models.checkpoints import CheckpointError

from _helpers import load_tool

WIDTH, SIZE, CLASSES = 48, 96, 5
META = dict(classes=tuple(f'class{i}' for i in range(CLASSES)),
            palette=[[i * 40, 255 - i * 40, i * 20] for i in range(CLASSES)])
PREPROCESSOR = """data_preprocessor = dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                         std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                         seg_pad_val=255)
"""
UPERNET = PREPROCESSOR + f"""norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained='pretrain/deit_small_patch16_224-cd65a155.pth',
    backbone=dict(type='VisionTransformer', img_size=({SIZE}, {SIZE}), patch_size=16,
                  embed_dims={WIDTH}, num_layers=4, num_heads=3, out_indices=(0, 1, 2, 3),
                  drop_path_rate=0.1, final_norm=False, norm_eval=False),
    neck=dict(type='MultiLevelNeck', in_channels=[{WIDTH}] * 4, out_channels={WIDTH},
              scales=[4, 2, 1, 0.5]),
    decode_head=dict(type='UPerHead', in_channels=[{WIDTH}] * 4, in_index=[0, 1, 2, 3],
                     pool_scales=(1, 2, 3, 6), channels=32, dropout_ratio=0.1,
                     num_classes={CLASSES}, norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                      loss_weight=1.0)),
    auxiliary_head=dict(type='FCNHead', in_channels={WIDTH}, in_index=3, channels=16,
                        num_convs=1, concat_input=False, dropout_ratio=0.1,
                        num_classes={CLASSES}, norm_cfg=norm_cfg, align_corners=False,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                         loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
default_scope = 'mmseg'
"""
SEGMENTER = PREPROCESSOR + f"""model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(type='VisionTransformer', img_size=({SIZE}, {SIZE}), patch_size=16,
                  embed_dims={WIDTH}, num_layers=3, num_heads=3, final_norm=True,
                  with_cls_token=True, norm_cfg=dict(type='LN', eps=1e-6),
                  interpolate_mode='bicubic'),
    decode_head=dict(type='SegmenterMaskTransformerHead', in_channels={WIDTH}, channels={WIDTH},
                     num_classes={CLASSES}, num_layers=1, num_heads=3, embed_dims={WIDTH},
                     dropout_ratio=0.0,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                      loss_weight=1.0)),
    test_cfg=dict(mode='whole'))
default_scope = 'mmseg'
"""


def trained_mmseg_model(text, tmp_path, name):
    """An mmseg segmentor built by mmseg's classes from ``text``, every parameter and BatchNorm
    statistic random (so a wrong mapping shows), saved as mmseg saves a checkpoint."""
    from mmseg.registry import MODELS
    cfg_path = str(tmp_path / f'{name}.py')
    with open(cfg_path, 'w') as f:
        f.write(text)
    cfg = Config.fromfile(cfg_path)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                noise = torch.randn(value.shape, generator=gen) * 0.2
                value.copy_(noise.abs() + 0.5 if key.endswith('running_var') else
                            noise + (1.0 if key.endswith('.weight') and value.dim() == 1
                                     else 0.0))
    model.eval()
    ckpt = str(tmp_path / f'{name}.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': META}}, ckpt)
    return model, cfg_path, ckpt


def logits(model, img):
    with torch.no_grad():
        return model.predict(img)[0].seg_logits.data


def assert_same_logits(ours, theirs):
    """Equal up to float32 summation order: random weights make logits of several thousands, so
    the tolerance is relative to their scale (a wrong key mapping is off by the scale itself)."""
    torch.testing.assert_close(ours, theirs, atol=1e-5 * float(theirs.abs().max()), rtol=1e-4)


@pytest.fixture
def image():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('text', [UPERNET, SEGMENTER], ids=['upernet', 'segmenter-mask'])
def test_one_call_converts_the_whole_model_and_predicts_as_mmseg(text, tmp_path, image):
    theirs, cfg_path, ckpt = trained_mmseg_model(text, tmp_path, 'mmseg_model')
    ours = init_from_mmseg(cfg_path, ckpt, fine_budget=1.0)
    assert type(ours).__name__ == 'MSViTEncoderDecoder'
    assert type(ours.backbone).__name__ == 'MSViT'
    assert ours.dataset_meta['classes'] == META['classes']
    prediction = ours.predict(image)[0]
    assert bool(prediction.msvit_fine_mask.all())  # budget 1.0: every region fine
    assert_same_logits(prediction.seg_logits.data, logits(theirs, image))
    # at another size, not a multiple of the 32 px region nor of the 16 px patch (mmseg's
    # keep-ratio resize gives such sizes): still mmseg's predictions
    other = torch.randn(1, 3, 72, 100, generator=torch.Generator().manual_seed(2))
    assert_same_logits(logits(ours, other), logits(theirs, other))
    # the auxiliary head came along too (a recipe's step 2 trains with it)
    if theirs.with_auxiliary_head:
        for key, value in theirs.auxiliary_head.state_dict().items():
            assert torch.equal(ours.auxiliary_head.state_dict()[key], value)
    # at a budget the content gate keeps that share of regions fine, and it costs less
    mixed = init_from_mmseg(cfg_path, ckpt, fine_budget=0.34).predict(image)[0]
    assert mixed.msvit_fine_mask.float().mean().item() == pytest.approx(3 / 9)
    assert mixed.msvit_backbone_macs < prediction.msvit_backbone_macs


def test_the_command_writes_a_config_and_checkpoint_every_tool_takes(tmp_path, image):
    mmseg2msvit = load_tool('tools/model_converters/mmseg2msvit.py')
    theirs, cfg_path, ckpt = trained_mmseg_model(UPERNET, tmp_path, 'upernet_vit')
    out_dir = str(tmp_path / 'converted')
    cfg_out, ckpt_out = mmseg2msvit.main([cfg_path, ckpt, out_dir, '--fine-budget', '1.0'])
    assert (osp.basename(cfg_out), osp.basename(ckpt_out)) == ('upernet_vit_msvit.py',
                                                               'upernet_vit_msvit.pth')
    converted = Config.fromfile(cfg_out)
    assert converted.model.neck.type == 'MixedScaleToDense'
    assert converted.model.decode_head.type == 'MixedScaleUPerHead'
    assert converted.model.backbone.gate == dict(type='ContentGate')
    assert converted.model.pretrained is None
    ours = init_mixed_scale_model(cfg_out, ckpt_out, fine_budget=1.0)
    assert_same_logits(logits(ours, image), logits(theirs, image))
    # usable as step 1 of the recipe: the recipe's load_from check accepts it
    from mmseg_msvit.models.checkpoints import read_checkpoint, state_dict_of
    state = state_dict_of(read_checkpoint(ckpt_out))
    assert 'neck.multi_level.lateral_convs.0.conv.weight' in state
    assert 'backbone.blocks.3.attn.qkv.weight' in state
    assert 'backbone.patch_embed.pos_embed' in state and 'backbone.pos_embed' not in state
    with pytest.raises(FileExistsError, match='pass --force'):
        mmseg2msvit.main([cfg_path, ckpt, out_dir])
    # an output that would be the source is never written, --force or not
    import shutil
    source_cfg = str(tmp_path / 'a.py')
    source_ckpt = osp.join(out_dir, 'a_msvit.pth')
    shutil.copy(cfg_path, source_cfg)
    shutil.copy(ckpt, source_ckpt)
    with pytest.raises(FileExistsError, match='is the source checkpoint'):
        mmseg2msvit.main([source_cfg, source_ckpt, out_dir, '--force'])
    assert torch.load(source_ckpt, weights_only=True)['meta'] == {'dataset_meta': META}


def test_mixed_decoding_on_conversion(tmp_path, image):
    theirs, cfg_path, ckpt = trained_mmseg_model(UPERNET, tmp_path, 'm')
    # every region fine: mixed-scale decoding computes the dense model exactly
    ours = init_from_mmseg(cfg_path, ckpt, fine_budget=1.0, mixed_decoding=True)
    assert ours.neck.coarse_reduction == 2
    assert_same_logits(logits(ours, image), logits(theirs, image))
    cheap = init_from_mmseg(cfg_path, ckpt, fine_budget=0.34, mixed_decoding=True)
    dense_head = init_from_mmseg(cfg_path, ckpt, fine_budget=0.34)
    a, b = cheap.predict(image)[0], dense_head.predict(image)[0]
    assert a.msvit_macs < b.msvit_macs
    _, seg_path, seg_ckpt = trained_mmseg_model(SEGMENTER, tmp_path, 's')
    with pytest.raises(ValueError, match='neck=None'):
        init_from_mmseg(seg_path, seg_ckpt, mixed_decoding=True)


def test_what_cannot_be_converted_is_refused_by_name(tmp_path):
    from mmseg_msvit.from_mmseg import mixed_scale_config
    cfg = Config.fromstring(UPERNET, '.py')
    bad = copy.deepcopy(cfg)
    bad.model.backbone.output_cls_token = True
    with pytest.raises(ValueError, match='output_cls_token=True'):
        mixed_scale_config(bad)
    bad = copy.deepcopy(cfg)
    bad.model.type = 'CascadeEncoderDecoder'
    with pytest.raises(ValueError, match="only mmseg's EncoderDecoder"):
        mixed_scale_config(bad)
    bad = copy.deepcopy(cfg)
    bad.model.backbone = dict(type='ResNetV1c', depth=50)
    with pytest.raises(ValueError, match="only mmseg's VisionTransformer"):
        mixed_scale_config(bad)
    bad = copy.deepcopy(cfg)
    bad.model.neck = dict(type='FPN', in_channels=[48] * 4, out_channels=48, num_outs=4)
    with pytest.raises(ValueError, match="MultiLevelNeck or no neck"):
        mixed_scale_config(bad)
    with pytest.raises(ValueError, match='already a mixed-scale model'):
        mixed_scale_config(mixed_scale_config(cfg))
    converted = mixed_scale_config(cfg)
    assert converted.model.backbone.pos_embed_antialias is False  # mmseg's resampling
    assert converted.model.backbone.norm_eps == 1e-5  # mmseg's LN default, not timm's
    assert converted.model.backbone.patch_bias is False  # mmseg's default
    assert cfg.model.type == 'EncoderDecoder'  # the source config is not changed


def test_a_checkpoint_that_does_not_cover_the_model_is_refused_on_every_load_path(tmp_path,
                                                                                 image):
    from mmseg.apis import init_model
    mmseg2msvit = load_tool('tools/model_converters/mmseg2msvit.py')
    _, cfg_path, ckpt = trained_mmseg_model(UPERNET, tmp_path, 'vit_upernet')
    cfg_out, ckpt_out = mmseg2msvit.main([cfg_path, ckpt, str(tmp_path / 'out')])
    # mmseg's own checkpoint given to the converted (mixed-scale) config
    with pytest.raises(CheckpointError, match=r'an mmseg ViT segmentor.*mmseg2msvit\.py'):
        init_mixed_scale_model(cfg_out, ckpt)
    # mmseg's init_model loads what it can (with mmengine's warning); the model then refuses to
    # predict with the weights it did not get
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = init_model(cfg_out, ckpt, device='cpu')
    with pytest.raises(CheckpointError, match='does not cover this model'):
        model.predict(image)
    # the converted checkpoint with mmseg's original config: the converted config is named
    with pytest.raises(ValueError, match=r"not 'MSViT'.*mmseg2msvit\.py wrote"):
        init_mixed_scale_model(cfg_path, ckpt_out)
    # the converter's config and checkpoint swapped: one line, not a parser traceback
    with pytest.raises(ValueError, match='is not a config .*wrong order'):
        mmseg2msvit.main([ckpt, cfg_path, str(tmp_path / 'swapped')])
    # a backbone alone: refused, naming what the file is
    backbone_only = str(tmp_path / 'backbone.pth')
    state = torch.load(ckpt_out, weights_only=True)['state_dict']
    torch.save({k: v for k, v in state.items() if k.startswith('backbone.')}, backbone_only)
    with pytest.raises(CheckpointError, match='a backbone .*init_cfg'):
        init_mixed_scale_model(cfg_out, backbone_only)
    # a full checkpoint through mmseg's init_model predicts; training after a partial load is a
    # start (load_from), not an evaluation
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = init_model(cfg_out, ckpt_out, device='cpu')
    model.predict(image)
    with DefaultScope.overwrite_default_scope('mmseg'):
        partial = init_model(cfg_out, ckpt, device='cpu')
    partial.train()
    partial.eval()
    partial.predict(image)
