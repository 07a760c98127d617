"""Mixed-scale decoding: the neck and the UPerNet head run coarse regions at reduced resolution.

Equal to mmseg's own modules with every region fine, to the same modules on reduced maps with
every region coarse; no seams; the MACs of what ran, checked by mmengine's counter; static
shapes in budget mode (export of the whole segmentor); mmseg checkpoints load as they are."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.registry import DefaultScope
from mmseg.models.decode_heads import UPerHead
from mmseg.models.necks import MultiLevelNeck
from mmseg.registry import MODELS

from mmseg_msvit.analysis.macs import count_macs_with_mmengine
from mmseg_msvit.models import MixedScaleMap, MixedScaleUPerHead, RegionBlocks, ScalePolicy
from mmseg_msvit.models.necks.mixed_scale_to_dense import MixedScaleMultiLevelNeck

SCALES = [4, 2, 1, 0.5]
NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def mmseg_scope():
    """mmseg's modules build their parts (losses, necks) from mmseg's registry."""
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


def randomise_norms(module):
    """BatchNorm statistics and affine parameters away from the identity, so a norm applied to
    the wrong pixels shows."""
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return module


def mmseg_neck_and_head(channels=12):
    """mmseg's own MultiLevelNeck and UPerHead (BN, dropout), and ours with the same weights,
    loaded from mmseg's state dicts."""
    torch.manual_seed(0)
    neck = MultiLevelNeck([16] * 4, channels, SCALES)
    head = UPerHead(in_channels=[channels] * 4, in_index=[0, 1, 2, 3], channels=8,
                    num_classes=NUM_CLASSES, norm_cfg=dict(type='BN'), dropout_ratio=0.1)
    randomise_norms(head)
    ours_neck = MixedScaleMultiLevelNeck([16] * 4, channels, SCALES)
    ours_head = MixedScaleUPerHead(in_channels=[channels] * 4, in_index=[0, 1, 2, 3],
                                   channels=8, num_classes=NUM_CLASSES,
                                   norm_cfg=dict(type='BN'), dropout_ratio=0.1)
    ours_neck.load_state_dict(neck.state_dict())
    ours_head.load_state_dict(head.state_dict())
    return neck.eval(), head.eval(), ours_neck.eval(), ours_head.eval()


def token_maps(batch=2, rows=8, cols=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 16, rows, cols, generator=gen) for _ in range(4)]


def blocks_for(mask, maps, reduction=2, static=None):
    return RegionBlocks(mask, 2, tuple(maps[0].shape[-2:]), reduction, SCALES, static)


@torch.no_grad()
def test_every_region_fine_is_mmsegs_neck_and_head():
    neck, head, ours_neck, ours_head = mmseg_neck_and_head()
    for rows, cols in ((8, 12), (7, 11)):  # a whole grid of regions, and a cropped one
        maps = token_maps(rows=rows, cols=cols)
        reference = head(list(neck(maps)))
        mask = torch.ones(2, (rows + 1) // 2, (cols + 1) // 2, dtype=torch.bool)
        levels = ours_neck(maps, blocks_for(mask, maps))
        assert isinstance(levels[0], MixedScaleMap) and isinstance(levels[2], torch.Tensor)
        out = ours_head(list(levels))
        assert out.shape == reference.shape == (2, NUM_CLASSES, 4 * rows, 4 * cols)
        torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
        # and with dense inputs it IS UPerHead
        torch.testing.assert_close(ours_head(list(ours_neck(maps))), reference)
        # only the x4 level mixed (mixed_scales): the x2 level stays a dense tensor
        levels = ours_neck(maps, blocks_for(mask, maps), mixed_scales=[4])
        assert isinstance(levels[0], MixedScaleMap) and isinstance(levels[1], torch.Tensor)
        torch.testing.assert_close(ours_head(list(levels)), reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize('reduction', [2, 4])
@torch.no_grad()
def test_every_region_coarse_is_the_same_modules_on_reduced_maps(reduction):
    neck, head, ours_neck, ours_head = mmseg_neck_and_head()
    maps = token_maps()
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    out = ours_head(list(ours_neck(maps, blocks_for(mask, maps, reduction, static=0))))
    reduced = copy.deepcopy(neck)
    reduced.scales = [s / reduction if s > 1 else s for s in SCALES]  # the finer levels only
    logits = head(list(reduced(maps)))
    expected = F.interpolate(logits, scale_factor=reduction, mode='bilinear',
                             align_corners=False)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def canvases(x: MixedScaleMap):
    """An independent picture of what a mixed level means, as two dense maps: at the fine
    resolution (fine blocks, coarse blocks nearest-upsampled) and at the coarse one (coarse
    blocks, fine blocks r x r-averaged, r the blocks' reduction)."""
    blocks = x.blocks
    fine, coarse = x.split()
    n, m, r = fine.shape[1], coarse.shape[1], blocks.reduction
    rows, cols = blocks.grid
    full = torch.zeros(blocks.batch, x.channels, rows * n, cols * n)
    half = torch.zeros(blocks.batch, x.channels, rows * m, cols * m)
    for kind, regions, values in (('fine', blocks.fine_regions, fine),
                                  ('coarse', blocks.coarse_regions, coarse)):
        for block, region in zip(values, regions.tolist()):
            image, i, j = region // (rows * cols), region % (rows * cols) // cols, region % cols
            block = block.permute(2, 0, 1)
            at_full = block if kind == 'fine' else block.repeat_interleave(r, 1).repeat_interleave(
                r, 2)
            at_half = F.avg_pool2d(block, r) if kind == 'fine' else block
            full[image, :, i * n:(i + 1) * n, j * n:(j + 1) * n] = at_full
            half[image, :, i * m:(i + 1) * m, j * m:(j + 1) * m] = at_half
    return full, half


def crops(canvas, blocks, regions, side, halo):
    padded = F.pad(canvas, (halo, ) * 4)
    rows, cols = blocks.grid
    out = []
    for region in regions.tolist():
        image, i, j = region // (rows * cols), region % (rows * cols) // cols, region % cols
        out.append(padded[image, :, i * side:(i + 1) * side + 2 * halo,
                          j * side:(j + 1) * side + 2 * halo])
    return torch.stack(out)


@torch.no_grad()
def test_halos_and_resampling_read_the_neighbours_whatever_their_resolution():
    """The BlockPad rule for resampling, against dense canvases built independently (fine
    blocks with their coarse neighbours nearest-upsampled; coarse blocks with their fine
    neighbours averaged): resampling each kind is resampling its canvas; the dense map is the
    fine canvas with coarse regions bilinearly upsampled. (A convolution's halo:
    test_a_convolution_is_every_blocks_convolution_of_its_window.)"""
    from mmseg_msvit.models.mixed_maps import resample_into
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 3, 4, generator=gen) > 0.5
    blocks = RegionBlocks(mask, 2, (6, 8), 2, SCALES)
    x = MixedScaleMap.from_blocks(torch.randn(blocks.num_fine, 4, 4, 3, generator=gen),
                                  torch.randn(blocks.num_coarse, 2, 2, 3, generator=gen),
                                  blocks, 2.0)
    full, half = canvases(x)
    up = resample_into(x, 2.0, blocks, 4.0)
    fine, coarse = up.split()
    full_up = F.interpolate(full, scale_factor=2, mode='bilinear', align_corners=False)
    half_up = F.interpolate(half, scale_factor=2, mode='bilinear', align_corners=False)
    torch.testing.assert_close(fine.permute(0, 3, 1, 2),
                               crops(full_up, blocks, blocks.fine_regions, 8, 0))
    torch.testing.assert_close(coarse.permute(0, 3, 1, 2),
                               crops(half_up, blocks, blocks.coarse_regions, 4, 0))
    dense = x.to_dense()
    coarse_pixels = (~mask).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    torch.testing.assert_close(dense, torch.where(coarse_pixels, F.interpolate(
        half, scale_factor=2, mode='bilinear', align_corners=False), full))


@pytest.mark.parametrize('grad', [False, True])
@pytest.mark.parametrize('reduction,out_channels', [(2, 5), (4, 5), (2, 70)])
def test_a_convolution_is_every_blocks_convolution_of_its_window(grad, reduction, out_channels):
    """A 3x3 convolution of a mixed level (every pixel's nine tap products, summed per output
    pixel; more output channels than one group of TAP_PRODUCT_CHANNELS too) gives each block
    the convolution of its window on the canvases (the halo from the neighbours: a coarse one's
    nearest pixel, a fine one's pixels averaged; zero outside the input), with and without
    autograd, and the same gradients."""
    from mmseg_msvit.models import mixed_maps
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 3, 4, generator=gen) > 0.5
    # a cropped grid: zeros inside the grid; every block at least 1 px wide at reduction 4
    blocks = RegionBlocks(mask, 2, (5, 7), reduction, [4.0])
    n, m = blocks.side(4.0, 'fine'), blocks.side(4.0, 'coarse')
    data = torch.randn(blocks.num_fine * n * n + blocks.num_coarse * m * m, 6, generator=gen)
    conv = torch.nn.Conv2d(6, out_channels, 3, padding=1)
    upstream = torch.randn(data.shape[0], out_channels, generator=gen)
    results = []
    for reference in (True, False):
        leaf = data.clone().requires_grad_(grad)
        conv.zero_grad()
        with torch.set_grad_enabled(grad):
            x = MixedScaleMap(leaf, blocks, 4.0)
            if reference:  # F.conv2d on every block's window, cut from the canvases
                full, half = canvases(x)
                outs = []
                for canvas, kind, regions in ((full, 'fine', blocks.fine_regions),
                                              (half, 'coarse', blocks.coarse_regions)):
                    rows, cols = blocks.valid(4.0, kind)
                    inside = torch.zeros_like(canvas[:1, :1])
                    inside[..., :rows, :cols] = 1
                    side = blocks.side(4.0, kind)
                    out = F.conv2d(crops(canvas * inside, blocks, regions, side, 1),
                                   conv.weight, conv.bias)
                    outs.append(out.permute(0, 2, 3, 1).reshape(-1, out_channels))
                out = torch.cat(outs)
            else:
                out = mixed_maps._conv(conv, x).data
        if grad:
            (out * upstream).sum().backward()
        results.append((out.detach(), leaf.grad, conv.weight.grad, conv.bias.grad))
    for ours, theirs in zip(results[1], results[0]):  # (weight gradients sum many products)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert results[0][0].abs().sum() > 0 and (not grad or results[0][1].abs().sum() > 0)


@torch.no_grad()
def test_images_of_a_batch_do_not_mix():
    """A batch of images with different numbers of fine regions (threshold mode: counts read
    from the mask) gives each image what it gives alone; so does a static count."""
    _, _, ours_neck, ours_head = mmseg_neck_and_head()
    maps = token_maps(batch=3)
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand(3, 4, 6, generator=gen) > torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    together = ours_head(list(ours_neck(maps, blocks_for(mask, maps))))
    for index in range(3):
        alone = ours_head(list(ours_neck([m[index:index + 1] for m in maps],
                                         blocks_for(mask[index:index + 1], maps))))
        torch.testing.assert_close(together[index:index + 1], alone, atol=2e-5, rtol=1e-4)
    # budget mode: every image has the same number of fine regions, known from shapes
    ranked = torch.rand(3, 24, generator=gen).argsort(1)[:, :10]
    budget = torch.zeros(3, 24, dtype=torch.bool).scatter(1, ranked, True).view(3, 4, 6)
    torch.testing.assert_close(
        ours_head(list(ours_neck(maps, blocks_for(budget, maps, static=10)))),
        ours_head(list(ours_neck(maps, blocks_for(budget, maps)))))


def test_training_mode_batch_norm_and_dropout_as_on_the_dense_map():
    """In training, every pixel of every block is a sample of BatchNorm's statistics (all fine:
    those of the dense map), and channel dropout draws one mask per image and channel."""
    neck, head, ours_neck, ours_head = mmseg_neck_and_head()
    head.train(), ours_head.train()
    maps = token_maps()
    mask = torch.ones(2, 4, 6, dtype=torch.bool)
    torch.manual_seed(7)
    reference = head(list(neck(maps)))
    torch.manual_seed(7)
    out = ours_head(list(ours_neck(maps, blocks_for(mask, maps))))
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
    for ours, theirs in zip(ours_head.modules(), head.modules()):
        if isinstance(ours, torch.nn.BatchNorm2d):
            torch.testing.assert_close(ours.running_mean, theirs.running_mean)
            torch.testing.assert_close(ours.running_var, theirs.running_var)
    # mixed: every parameter gets a gradient, and the dropout zeroes whole channels of an image
    mixed = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(2)) > 0.5
    ours_head.zero_grad()
    ours_head(list(ours_neck(maps, blocks_for(mixed, maps)))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours_head.parameters())
    levels = ours_neck(maps, blocks_for(mixed, maps))
    x = levels[0]
    features = x.with_data(torch.ones(x.data.shape[0], 8))
    from mmseg_msvit.models.mixed_maps import classify
    ours_head.dropout.p = 0.5
    dropped = classify(ours_head, features).data  # conv_seg of a dropped-out ones map
    kept = (dropped - ours_head.conv_seg.bias).abs().sum(1) > 0
    image = x.blocks.pixel_image(x.scale)
    for b in range(2):  # pixels of one image agree on which channels were dropped
        rows = dropped[image == b]
        assert torch.allclose(rows, rows[:1].expand_as(rows)) and kept[image == b].all()


class NeckAndHead(torch.nn.Module):
    """Tensors in and out, the blocks fixed: what mmengine's counter traces."""

    def __init__(self, neck, head, blocks=None):
        super().__init__()
        self.neck, self.head, self.blocks = neck, head, blocks

    def forward(self, *maps):
        return self.head(list(self.neck(list(maps), self.blocks)))


@torch.no_grad()
def test_macs_are_what_ran_and_mmengine_counts_the_same():
    _, _, ours_neck, ours_head = mmseg_neck_and_head()
    maps = token_maps(batch=2)
    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(2, 4, 6, generator=gen) > torch.tensor([0.3, 0.7])[:, None, None]
    totals = {}
    for name, blocks in (('mixed', blocks_for(mask, maps)), ('dense', None)):
        levels = ours_neck(maps, blocks)
        ours = ours_neck.macs((8, 12), levels) + ours_head.macs(list(levels))
        counted = count_macs_with_mmengine(NeckAndHead(ours_neck, ours_head, blocks),
                                           tuple(maps), matrix_products_only=True)
        assert float(ours.sum()) == pytest.approx(counted, rel=1e-9), name
        totals[name] = ours
    # per image: the image with more fine regions costs more; dense costs the most
    assert mask[0].sum() > mask[1].sum() and totals['mixed'][0] > totals['mixed'][1]
    assert (totals['dense'] > totals['mixed']).all()
    assert totals['dense'][0] == totals['dense'][1]


def recipe_segmentor(**neck):
    from test_segmentor import NUM_CLASSES as classes
    cfg = dict(
        type='MSViTEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(64, 96)),
        backbone=dict(type='MSViT', arch=dict(embed_dims=32, depth=4, num_heads=2),
                      img_size=(64, 96), out_indices=(0, 1, 2, 3), force_scale=None,
                      gate=dict(type='ContentGate'), fine_budget=0.5),
        neck=dict(type='MixedScaleToDense', in_channels=[32] * 4, out_channels=16,
                  scales=SCALES, **neck),
        decode_head=dict(type='MixedScaleUPerHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                         channels=8, num_classes=classes, norm_cfg=dict(type='BN'),
                         loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(ConfigDict(cfg))
    model.init_weights()
    return randomise_norms(model).eval()


@torch.no_grad()
def test_segmentor_predictions_carry_the_whole_models_cost():
    torch.manual_seed(0)
    model = recipe_segmentor(coarse_reduction=2)
    inputs = torch.randn(2, 3, 64, 96)
    results = model.predict(inputs)
    meta = results[0].metainfo
    assert meta['msvit_macs'] == pytest.approx(meta['msvit_backbone_macs'] +
                                               meta['msvit_decode_macs'])
    # the backbone's figure is the backbone's; the neck's coarse unpooling is the neck's
    from mmseg_msvit.models.costs import layout_macs
    x, layout = model.extract_feat_and_layout(inputs[:1])
    assert meta['msvit_backbone_macs'] == pytest.approx(float(layout_macs(model.backbone,
                                                                          layout)[0]))
    unpooling = MODELS.build(dict(type='MixedScaleToDense', in_channels=[32] * 4,
                                  out_channels=16, scales=SCALES, coarse_unpool=True,
                                  coarse_reduction=2))
    unpooling.multi_level.load_state_dict(model.neck.multi_level.state_dict())
    with_unpool = copy.deepcopy(model)
    with_unpool.neck = unpooling.eval()
    unpool_meta = with_unpool.predict(inputs)[0].metainfo
    assert unpooling.unpool_macs(layout) == layout.num_regions * 4 * 32 * 4 * 32
    assert unpool_meta['msvit_backbone_macs'] == meta['msvit_backbone_macs']
    assert unpool_meta['msvit_decode_macs'] == pytest.approx(meta['msvit_decode_macs'] +
                                                             unpooling.unpool_macs(layout))
    # the same model decoding densely costs more, and every region fine costs the most
    dense = copy.deepcopy(model)
    dense.neck.coarse_reduction = None
    dense_meta = dense.predict(inputs)[0].metainfo
    assert dense_meta['msvit_backbone_macs'] == meta['msvit_backbone_macs']
    assert dense_meta['msvit_decode_macs'] > meta['msvit_decode_macs']
    fine = model.predict(inputs, policy=ScalePolicy.forced('fine'))[0].metainfo
    assert fine['msvit_decode_macs'] == dense_meta['msvit_decode_macs']
    # every region fine: the mixed model's prediction is the dense one's
    torch.testing.assert_close(
        model.predict(inputs, policy=ScalePolicy.forced('fine'))[0].seg_logits.data,
        dense.predict(inputs, policy=ScalePolicy.forced('fine'))[0].seg_logits.data)
    # the metric reports them
    from mmseg_msvit.evaluation import ComplexityMetric
    metric = ComplexityMetric()
    metric.process({}, [r.to_dict() for r in results])
    values = metric.compute_metrics(metric.results)
    assert values['model_gmacs'] == pytest.approx(
        values['backbone_gmacs'] + values['decode_gmacs'], abs=1e-3)


@torch.no_grad()
def test_mixed_decoding_runs_under_bf16_autocast():
    """Under CPU autocast to bf16 (the GPU speed command's --dtype bf16) the mixed neck and head
    run end to end and stay close to fp32."""
    torch.manual_seed(0)
    model = recipe_segmentor(coarse_reduction=2)
    inputs = torch.randn(2, 3, 64, 96)
    reference = model.predict(inputs)[0].seg_logits.data
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model.predict(inputs)[0].seg_logits.data
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()


@torch.no_grad()
def test_budget_mode_exports_the_whole_segmentor():
    from mmseg_msvit.deployment import SegmentorLogits
    torch.manual_seed(0)
    model = recipe_segmentor(coarse_reduction=2)
    module = SegmentorLogits(model)
    image = torch.randn(1, 3, 64, 96)
    program = torch.export.export(module, (image, ))
    other = torch.randn(1, 3, 64, 96)  # another image: other decisions, the same shapes
    torch.testing.assert_close(program.module()(other), module(other), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_mmseg_upernet_checkpoint_keys_load_into_the_neck_and_head():
    """mmseg's UPerNet names its neck's convolutions neck.lateral_convs / neck.convs and its
    head decode_head.*: they load as they are, and with every region fine the outputs equal
    mmseg's modules."""
    torch.manual_seed(0)
    model = recipe_segmentor(coarse_reduction=2)
    neck = MultiLevelNeck([32] * 4, 16, SCALES)
    head = UPerHead(in_channels=[16] * 4, in_index=[0, 1, 2, 3], channels=8,
                    num_classes=model.decode_head.num_classes, norm_cfg=dict(type='BN'))
    randomise_norms(head)
    state = {f'backbone.{k}': v for k, v in model.backbone.state_dict().items()}
    state.update({f'neck.{k}': v for k, v in neck.state_dict().items()})
    state.update({f'decode_head.{k}': v for k, v in head.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(('neck.', 'decode_head.'))]
    neck.eval(), head.eval()
    inputs = torch.randn(1, 3, 64, 96)
    feats = model.backbone(inputs, ScalePolicy.forced('fine'))
    reference = head(list(neck([f.to_dense() for f in feats])))
    x, _ = model.extract_feat_and_layout(inputs, ScalePolicy.forced('fine'))
    torch.testing.assert_close(model.decode_head(x), reference)
    # this project's older checkpoints named the multi-level neck neck.rescale.*
    older = {k.replace('neck.multi_level.', 'neck.rescale.'): v
             for k, v in model.state_dict().items()}
    assert any(k.startswith('neck.rescale.') for k in older)
    fresh = recipe_segmentor(coarse_reduction=2)
    missing, unexpected = fresh.load_state_dict(older, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(('neck.', 'decode_head.'))]
    x, _ = fresh.extract_feat_and_layout(inputs, ScalePolicy.forced('fine'))
    torch.testing.assert_close(fresh.decode_head(x), reference)


@torch.no_grad()
def test_an_older_checkpoint_loads_through_the_tools_checks(tmp_path):
    """The tools load checkpoints through load_model_weights (coverage and foreign-weight checks,
    then the usable keys): a file with the older names (neck.rescale.*, the CLS token and
    position table at the backbone's top level, as timm names them) is the same model."""
    from mmseg_msvit.models.checkpoints import foreign_weights, load_model_weights
    torch.manual_seed(0)
    model = recipe_segmentor(coarse_reduction=2)
    path = str(tmp_path / 'older.pth')
    older = {k.replace('neck.multi_level.', 'neck.rescale.').replace(
        'backbone.patch_embed.cls_token', 'backbone.cls_token').replace(
            'backbone.patch_embed.pos_embed', 'backbone.pos_embed'): v
             for k, v in model.state_dict().items()}
    assert 'backbone.pos_embed' in older and 'backbone.cls_token' in older
    torch.save({'state_dict': older}, path)
    torch.manual_seed(1)
    fresh = recipe_segmentor(coarse_reduction=2)
    assert foreign_weights(fresh, torch.load(path)) == []
    load_model_weights(fresh, path)
    inputs = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(fresh.predict(inputs)[0].seg_logits.data,
                               model.predict(inputs)[0].seg_logits.data)


def test_neck_and_head_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match='coarse_reduction must be None, 2 or 4'):
        MODELS.build(dict(type='MixedScaleToDense', in_channels=8, out_channels=8,
                          scales=SCALES, coarse_reduction=3))
    with pytest.raises(ValueError, match='coarse_reduction needs scales'):
        MODELS.build(dict(type='MixedScaleToDense', coarse_reduction=2))
    with pytest.raises(ValueError, match=r'mixed_scales must be scales > 1 among scales'):
        MODELS.build(dict(type='MixedScaleToDense', in_channels=8, out_channels=8,
                          scales=SCALES, coarse_reduction=2, mixed_scales=(1, )))
    with pytest.raises(ValueError, match="decode_regions must be 'tokens' or 'coarse'"):
        MODELS.build(dict(type='MixedScaleToDense', in_channels=8, out_channels=8,
                          scales=SCALES, coarse_reduction=2, decode_regions='fine'))
    # mmseg's own UPerHead given mixed levels says which head to use
    neck, head, ours_neck, _ = mmseg_neck_and_head()
    maps = token_maps()
    levels = ours_neck(maps, blocks_for(torch.ones(2, 4, 6, dtype=torch.bool), maps))
    with pytest.raises(TypeError, match='MixedScaleUPerHead'):
        head(list(levels))


@torch.no_grad()
def test_cheaper_head_baseline_and_dense_teacher(tmp_path):
    """decode_regions='coarse' runs every region at reduced resolution whatever the tokens;
    the distillation teacher built from a mixed model decodes densely."""
    torch.manual_seed(0)
    model = recipe_segmentor(coarse_reduction=2, decode_regions='coarse')
    inputs = torch.randn(1, 3, 64, 96)
    x, layout = model.extract_feat_and_layout(inputs, ScalePolicy.forced('fine'))
    assert isinstance(x[0], MixedScaleMap) and x[0].blocks.num_fine == 0
    assert layout.fine_mask.all()  # the tokens were all fine
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'dense.pth')
    from mmseg_msvit.models.losses import DenseDistillLoss
    distill = DenseDistillLoss(str(tmp_path / 'dense.pth'))
    teacher = distill.build_teacher(model)
    assert teacher.neck.coarse_reduction is None
    logits, _ = distill.teacher_outputs(inputs)
    dense = copy.deepcopy(model)
    dense.neck.coarse_reduction = None
    expected = dense.decode_head(dense.extract_feat_and_layout(
        inputs, ScalePolicy.forced('fine'))[0])
    torch.testing.assert_close(logits, expected)




@torch.no_grad()
def test_slide_inference_decodes_every_window_with_its_own_blocks():
    """Slide inference: every window has its own decisions and blocks; the neck + head cost of
    the image is the sum over its windows."""
    torch.manual_seed(0)
    model = recipe_segmentor(coarse_reduction=2)
    model.test_cfg = ConfigDict(mode='slide', crop_size=(64, 64), stride=(32, 32))
    inputs = torch.randn(1, 3, 64, 96)
    result = model.predict(inputs)[0]
    assert result.seg_logits.data.shape[-2:] == (64, 96)
    meta = result.metainfo
    assert meta['msvit_forwards'] == 2
    whole = copy.deepcopy(model)
    whole.test_cfg = ConfigDict(mode='whole')
    x, layout = whole.extract_feat_and_layout(inputs[..., :64])
    one_window = float(whole.decode_macs(layout, x)[0])
    assert meta['msvit_decode_macs'] == pytest.approx(2 * one_window)
