"""Adopting MSViT from an mmseg / mmpretrain setup: their ViT checkpoints load and reproduce the
libraries' own features with every region fine; mmseg ViT argument names are accepted."""
import pytest
import torch

from mmseg_msvit.models import MSViT
from mmseg_msvit.models.checkpoints import to_timm_vit, vit_format

WIDTH, DEPTH, HEADS, SIZE = 48, 2, 3, 64


def randomise(module, seed=0):
    """Every parameter random (LayerNorm scales and biases included), so a wrong mapping shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2 +
                        (1.0 if param.dim() == 1 and param.shape[0] == WIDTH else 0.0))
    module.eval()
    return module


def msvit_from(path, **kwargs):
    model = MSViT(arch=dict(embed_dims=WIDTH, depth=DEPTH, num_heads=HEADS), img_size=SIZE,
                  out_indices=(0, 1), force_scale='fine',
                  init_cfg=dict(type='Pretrained', checkpoint=path), **kwargs)
    model.init_weights()
    return model.eval()


def assert_same_features(msvit, theirs, img):
    with torch.no_grad():
        ours = [f.to_dense() for f in msvit(img)]
        expected = theirs(img)
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def mmseg_vit(patch_bias, norm_cfg):
    from mmseg.models.backbones import VisionTransformer
    return randomise(VisionTransformer(
        img_size=SIZE, patch_size=16, embed_dims=WIDTH, num_layers=DEPTH, num_heads=HEADS,
        out_indices=(0, 1), final_norm=True, patch_bias=patch_bias, norm_cfg=norm_cfg))


@pytest.mark.parametrize('patch_bias', [False, True])
@pytest.mark.parametrize('norm_cfg', [dict(type='LN', eps=1e-6), dict(type='LN')])
def test_mmseg_vision_transformer_checkpoint_reproduces_its_features(patch_bias, norm_cfg,
                                                                     tmp_path):
    vit = mmseg_vit(patch_bias, norm_cfg)
    path = str(tmp_path / 'mmseg_vit.pth')
    torch.save({'state_dict': vit.state_dict(), 'meta': {}}, path)
    assert vit_format(vit.state_dict()) == 'mmseg'
    # mmseg's own argument names carry the layout: patch bias and LayerNorm eps
    model = msvit_from(path, patch_bias=patch_bias, norm_cfg=norm_cfg)
    assert model.norm_eps == norm_cfg.get('eps', 1e-5)
    img = torch.randn(2, 3, SIZE, SIZE)
    assert_same_features(model, vit, img)
    if not patch_bias:
        # converted for a timm-layout model, the missing bias is zero, not a random init
        state, _ = to_timm_vit(vit.state_dict())
        assert torch.equal(state['patch_embed.proj.bias'], torch.zeros(WIDTH))
        with_bias = msvit_from(path, patch_bias=True, norm_cfg=norm_cfg)
        assert_same_features(with_bias, vit, img)
    else:
        with pytest.raises(ValueError, match='non-zero patch-embedding bias'):
            msvit_from(path, patch_bias=False, norm_cfg=norm_cfg)


def test_the_wrong_layernorm_eps_is_a_real_difference(tmp_path):
    """Why norm_eps matters: mmseg's default LN (1e-5) loaded with timm's 1e-6 differs."""
    vit = mmseg_vit(True, dict(type='LN'))
    path = str(tmp_path / 'vit.pth')
    torch.save(vit.state_dict(), path)
    img = torch.randn(1, 3, SIZE, SIZE) * 0.05  # small activations make eps visible
    model = msvit_from(path)  # norm_eps 1e-6
    with torch.no_grad():
        ours, theirs = model(img)[-1].to_dense(), vit(img)[-1]
    assert not torch.allclose(ours, theirs, atol=2e-5, rtol=1e-4)


def test_mmseg_segmentor_checkpoint_loads_its_backbone(tmp_path):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    cfg = dict(
        type='EncoderDecoder',
        backbone=dict(type='VisionTransformer', img_size=SIZE, patch_size=16, embed_dims=WIDTH,
                      num_layers=DEPTH, num_heads=HEADS, out_indices=(0, 1), final_norm=True,
                      norm_cfg=dict(type='LN', eps=1e-6)),
        decode_head=dict(type='FCNHead', in_channels=WIDTH, in_index=1, channels=16,
                         num_convs=1, num_classes=3, norm_cfg=dict(type='BN')))
    with DefaultScope.overwrite_default_scope('mmseg'):
        segmentor = MODELS.build(cfg)
    randomise(segmentor.backbone)
    path = str(tmp_path / 'segmentor.pth')
    torch.save({'state_dict': segmentor.state_dict(), 'meta': {}}, path)
    model = msvit_from(path, patch_bias=False)
    assert_same_features(model, segmentor.backbone, torch.randn(2, 3, SIZE, SIZE))


def test_mmpretrain_vision_transformer_checkpoint_reproduces_its_features(tmp_path):
    from mmpretrain.models.backbones import VisionTransformer
    vit = randomise(VisionTransformer(
        arch=dict(embed_dims=WIDTH, num_layers=DEPTH, num_heads=HEADS,
                  feedforward_channels=4 * WIDTH),
        img_size=SIZE, patch_size=16, out_indices=(0, 1), out_type='featmap', final_norm=True))
    path = str(tmp_path / 'mmpretrain_vit.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in vit.state_dict().items()}}, path)
    assert vit_format(vit.state_dict()) == 'mmpretrain'
    assert_same_features(msvit_from(path), vit, torch.randn(2, 3, SIZE, SIZE))


def test_layouts_without_a_timm_counterpart_are_refused(tmp_path):
    from mmseg.models.backbones import VisionTransformer
    vit = VisionTransformer(img_size=SIZE, patch_size=16, embed_dims=WIDTH, num_layers=DEPTH,
                            num_heads=HEADS, pre_norm=True)
    with pytest.raises(KeyError, match='pre-norm'):
        to_timm_vit(vit.state_dict())
    with pytest.raises(KeyError, match='no ViT patch embedding'):
        to_timm_vit({'decode_head.conv_seg.weight': torch.zeros(1)})
    path = str(tmp_path / 'deeper.pth')
    torch.save(mmseg_vit(True, dict(type='LN')).state_dict(), path)
    with pytest.raises(ValueError, match='2 transformer blocks, the backbone has depth=3'):
        MSViT(arch=dict(embed_dims=WIDTH, depth=3, num_heads=HEADS), img_size=SIZE,
              init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights()


def test_mmseg_vit_argument_names_are_accepted_where_they_map_one_to_one():
    model = MSViT(arch='tiny', img_size=64, patch_size=16, num_layers=3, embed_dims=48,
                  num_heads=3, norm_cfg=dict(type='LN', eps=1e-6), act_cfg=dict(type='GELU'),
                  with_cls_token=True, output_cls_token=False, patch_norm=False,
                  pre_norm=False, interpolate_mode='bicubic')
    assert (model.depth, model.fine_patch_size, model.norm_eps) == (3, 16, 1e-6)
    assert MSViT(arch='tiny', img_size=64, norm_cfg=dict(type='LN')).norm_eps == 1e-5
    with pytest.raises(ValueError, match='output_cls_token=True is not supported'):
        MSViT(arch='tiny', img_size=64, output_cls_token=True)
    with pytest.raises(ValueError, match='got both num_layers=3'):
        MSViT(arch='tiny', img_size=64, num_layers=3, depth=4)
    with pytest.raises(ValueError, match="norm_cfg must be dict\\(type='LN'"):
        MSViT(arch='tiny', img_size=64, norm_cfg=dict(type='BN'))
    with pytest.raises(TypeError, match='unexpected argument frobnicate=1.*num_layers'):
        MSViT(arch='tiny', img_size=64, frobnicate=1)


def test_mmseg_vit_edge_values_as_mmseg_reads_them():
    """mmseg's ViT reads a 1-tuple img_size as a square and refuses a non-string pretrained at
    once; MSViT does the same (pretrained=123 used to fail only at the first init_weights)."""
    assert MSViT(arch='tiny', img_size=(64, )).img_size == (64, 64)
    with pytest.raises(TypeError, match='pretrained must be a checkpoint path'):
        MSViT(arch='tiny', img_size=64, pretrained=123)
    with pytest.raises(ValueError, match='img_size must be a positive int or a pair'):
        MSViT(arch='tiny', img_size=(64, 64, 64))


def readme_migration_config():
    import os.path as osp
    import re
    readme = open(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'README.md')).read()
    block = re.search(r'<!-- migration-start -->\s*```python\n(.*?)```\s*<!-- migration-end -->',
                      readme, re.S)
    assert block, 'README lost its "From an mmseg ViT config" block'
    return block.group(1)


def test_readme_migration_of_mmsegs_own_vit_config_trains_one_iteration(tmp_path):
    import os.path as osp

    from _helpers import load_tool
    from mmseg_msvit.datasets.synthetic import make_synthetic
    text = readme_migration_config()
    assert "mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py" in text
    path = tmp_path / 'msvit_from_mmseg.py'
    path.write_text(text)
    data = str(tmp_path / 'ade')
    make_synthetic(data, layout='ade20k', num_train=2, num_val=1, img_size=(64, 64))
    train = load_tool('tools/train.py')
    runner = train.main([
        str(path), '--work-dir', str(tmp_path / 'work'), '--cfg-options', 'model.pretrained=None',
        f'train_dataloader.dataset.data_root={data}', 'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'train_cfg.max_iters=1', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None',
        'test_cfg=None', 'test_dataloader=None', 'test_evaluator=None'])
    model = runner.model
    # mmseg's ViT-S, now mixed-scale: its arguments arrived under MSViT's names
    assert type(model).__name__ == 'MSViTEncoderDecoder'
    backbone = model.backbone
    assert (backbone.embed_dims, backbone.depth, backbone.num_heads) == (384, 12, 6)
    assert backbone.norm_eps == 1e-6 and backbone.out_indices == [2, 5, 8, 11]
    assert model.gate_loss is not None and runner.iter == 1
    assert osp.exists(osp.join(str(tmp_path / 'work'), 'iter_1.pth'))


def test_common_migration_mistakes_are_explained():
    import warnings

    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    backbone = dict(type='MSViT', arch=dict(embed_dims=WIDTH, depth=DEPTH, num_heads=HEADS),
                    img_size=SIZE, out_indices=(0, 1), gate=dict(type='MixedScaleGate',
                                                                 hidden_dims=(8, )))
    head = dict(type='FCNHead', in_channels=WIDTH, in_index=1, channels=8, num_convs=1,
                num_classes=3, norm_cfg=dict(type='BN'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        with pytest.raises(ValueError, match="neck=None.*MixedScaleToDense"):
            MODELS.build(dict(type='MSViTEncoderDecoder', backbone=backbone, decode_head=head))
        plain = MODELS.build(dict(type='EncoderDecoder', backbone=backbone, decode_head=head))
        gated = MODELS.build(dict(type='MSViTEncoderDecoder', backbone=backbone,
                                  neck=dict(type='MixedScaleToDense'), decode_head=head,
                                  gate_loss=dict(type='GBaSLoss', grid_size=(2, 2))))
    img = torch.randn(1, 3, SIZE, SIZE)
    plain.eval()
    with pytest.raises(TypeError, match="MixedScaleFeatures.*MixedScaleToDense"):
        plain.decode_head(plain.extract_feat(img))
    plain.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        plain.backbone(img)
        plain.backbone(img)  # once only
    messages = [str(w.message) for w in caught if 'no gate loss' in str(w.message)]
    assert len(messages) == 1 and 'MSViTEncoderDecoder' in messages[0]
    gated.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        gated.backbone(img)
    assert not [w for w in caught if 'no gate loss' in str(w.message)]


def run_python(code, cwd):
    import subprocess
    import sys
    return subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_mmseg_apis_can_be_imported_before_mmseg_msvit(tmp_path):
    import os.path as osp

    import mmseg_msvit_startup
    from mmseg_msvit.compat import mmcv_has_compiled_ops
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    pth = mmseg_msvit_startup.write_pth(str(tmp_path))
    assert osp.basename(pth) == 'mmseg_msvit_startup.pth'
    # a site folder holding the .pth, as site-packages would: mmseg first, then the extension
    code = ('import site; site.addsitedir(%r)\n'
            'from mmseg.apis import init_model\n'
            'import mmseg_msvit\n'
            'from mmseg.registry import MODELS\n'
            "assert MODELS.get('MSViT') is not None\n"
            "print('ok')" % str(tmp_path))
    result = run_python(code, repo)
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-2000:]
    if not mmcv_has_compiled_ops():
        # what the hook prevents: mmcv-lite without it cannot import mmseg.apis first (the
        # project's own environment has the .pth installed, so take its finder out first)
        result = run_python('import sys\n'
                            "sys.meta_path[:] = [f for f in sys.meta_path\n"
                            "                    if type(f).__name__ != 'MmcvOpsFinder']\n"
                            'import mmseg.apis', repo)
        assert result.returncode != 0 and 'mmcv._ext' in result.stderr


def test_package_metadata_declares_ranges_not_pins():
    import ast
    import os.path as osp
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    tree = ast.parse(open(osp.join(repo, 'setup.py')).read())
    requires = next(ast.literal_eval(node.value) for node in tree.body
                    if isinstance(node, ast.Assign) and
                    getattr(node.targets[0], 'id', '') == 'INSTALL_REQUIRES')
    names = {r.split('>')[0].split('<')[0].split('=')[0].strip(): r for r in requires}
    assert '==' not in ' '.join(requires)
    assert names['torch'].startswith('torch>=')
    assert {'mmsegmentation', 'mmengine', 'mmpretrain', 'timm'} <= set(names)
    # neither mmcv nor mmcv-lite: either one installed beside the other would clash
    assert not {'mmcv', 'mmcv-lite'} & set(names)
    # the tested pins stay exact in the lock files `make` installs
    pins = open(osp.join(repo, 'requirements', 'torch.txt')).read()
    assert 'torch==' in pins


def test_mmseg_vit_without_cls_token_reproduces_its_features(tmp_path):
    """mmseg's with_cls_token=False (its layers never see the CLS token): MSViT keeps the token
    out of every other token's attention and reproduces mmseg's features with every region
    fine; with mixed scales the padded batches run, and the flag changes the result."""
    from mmseg.models.backbones import VisionTransformer

    from mmseg_msvit.models import ScalePolicy
    vit = randomise(VisionTransformer(
        img_size=SIZE, patch_size=16, embed_dims=WIDTH, num_layers=DEPTH, num_heads=HEADS,
        out_indices=(0, 1), final_norm=True, with_cls_token=False,
        norm_cfg=dict(type='LN', eps=1e-6)))
    path = str(tmp_path / 'no_cls.pth')
    torch.save(vit.state_dict(), path)
    model = msvit_from(path, patch_bias=False, with_cls_token=False)
    assert model.with_cls_token is False and model.token_packing is False
    img = torch.randn(2, 3, SIZE, SIZE)
    assert_same_features(model, vit, img)
    with_cls = msvit_from(path, patch_bias=False)
    with torch.no_grad():
        assert not torch.allclose(with_cls(img)[-1].to_dense(), model(img)[-1].to_dense(),
                                  atol=1e-3)
        mask = torch.tensor([[[True, False], [False, False]], [[True, True], [False, True]]])
        mixed = model(img, ScalePolicy.given(mask))  # different token counts: padded batch
    assert mixed[-1].to_dense().shape == (2, WIDTH, SIZE // 16, SIZE // 16)
    for index in range(2):  # the padding and the CLS token change nothing for an image
        with torch.no_grad():
            alone = model(img[index:index + 1], ScalePolicy.given(mask[index:index + 1]))
        torch.testing.assert_close(mixed[-1].to_dense()[index:index + 1], alone[-1].to_dense(),
                                   atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match='with_cls_token must be True or False'):
        MSViT(arch='tiny', img_size=64, with_cls_token='no')


@pytest.mark.parametrize('size', [(64, 96), (72, 100), (48, 80)], ids=str)
def test_converted_mmseg_vit_matches_at_sizes_other_than_its_own(size, tmp_path):
    """At input sizes other than img_size, mmseg resizes its position table without
    antialiasing and pads only to its 16 px patch; with pos_embed_antialias=False (what the
    converter sets) MSViT resizes the same way, spans the table over the cells that cover the
    image and keeps the tokens of its padding to 32 px out of attention: the same features,
    whether the sides are multiples of 32, of 16 only, or neither."""
    from mmseg.models.backbones import VisionTransformer
    vit = randomise(VisionTransformer(
        img_size=SIZE, patch_size=16, embed_dims=WIDTH, num_layers=DEPTH, num_heads=HEADS,
        out_indices=(0, 1), final_norm=True, norm_cfg=dict(type='LN', eps=1e-6)))
    path = str(tmp_path / 'vit.pth')
    torch.save(vit.state_dict(), path)
    img = torch.randn(2, 3, *size)
    assert_same_features(msvit_from(path, patch_bias=False, pos_embed_antialias=False), vit,
                         img)
    if size != (64, 96):  # timm's antialiased resampling is another function
        with torch.no_grad():
            timm_like = msvit_from(path, patch_bias=False)(img)[-1].to_dense()
        assert not torch.allclose(timm_like, vit(img)[-1], atol=1e-3)


def test_load_config_reads_a_config_installed_with_mmseg():
    """'mmseg::vit/...py' (mmseg2msvit.py's documented form) is read through mmengine's hub."""
    from mmseg_msvit.cli import load_config
    cfg = load_config('mmseg::vit/vit_deit-s16_upernet_8xb2-80k_ade20k-512x512.py',
                      {'model.decode_head.num_classes': 7})
    assert cfg.model.backbone.type == 'VisionTransformer'
    assert cfg.model.decode_head.num_classes == 7
