"""The recommended recipe's parts: coarse tokens that keep detail, distillation from the dense
model."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mmseg_msvit.analysis import layout_macs
from mmseg_msvit.cli import fill_distill_teacher
from mmseg_msvit.models import CoarseTokenEmbed, DenseDistillLoss, MSViT, ScaleDecision


def tiny(**kwargs):
    cfg = dict(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64, out_indices=(0, 1),
               gate=dict(type='ContentGate'))
    cfg.update(kwargs)
    return MSViT(**cfg)


def pair(**kwargs):
    """The same weights without and with the coarse-token embedding."""
    torch.manual_seed(0)
    plain = tiny(**kwargs).eval()
    extended = tiny(coarse_detail=True, coarse_scale_embed=True, **kwargs).eval()
    missing, unexpected = extended.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == sorted(f'patch_embed.coarse_embed.{k}' for k in (
        'reduce.weight', 'reduce.bias', 'proj.weight', 'proj.bias', 'scale_embed'))
    assert not unexpected
    return plain, extended


@torch.no_grad()
def test_older_key_names_load_into_the_embedding():
    """The CLS token, position table and coarse-token extras live in the embedding
    (patch_embed.*); timm's top-level names and the older coarse_embed.* load as aliases."""
    _, extended = pair()
    randomise(extended.coarse_embed)
    older = {}
    for key, value in extended.state_dict().items():
        key = key.replace('patch_embed.coarse_embed.', 'coarse_embed.')
        older[{'patch_embed.cls_token': 'cls_token',
               'patch_embed.pos_embed': 'pos_embed'}.get(key, key)] = value
    assert 'coarse_embed.proj.weight' in older and 'pos_embed' in older
    torch.manual_seed(3)
    fresh = tiny(coarse_detail=True, coarse_scale_embed=True).eval()
    fresh.load_state_dict(older)  # strict: every key found under its name now
    img = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    masks = varied_masks()
    for a, b in zip(fresh(img, fine_mask=masks), extended(img, fine_mask=masks)):
        torch.testing.assert_close(a.to_dense(), b.to_dense(), atol=0, rtol=0)
    assert fresh.pos_embed is fresh.patch_embed.pos_embed  # timm's name reads the embedding's


def varied_masks():
    return torch.stack([torch.zeros(3, 4, dtype=torch.bool), torch.tensor(
        [[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool),
                        torch.ones(3, 4, dtype=torch.bool)])


@pytest.mark.parametrize('token_packing', [True, False])
def test_zero_initialised_coarse_embed_changes_nothing(token_packing):
    plain, extended = pair(token_packing=token_packing)
    img = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for kwargs in (dict(fine_mask=varied_masks()), {}):
            for a, b in zip(plain(img, **kwargs), extended(img, **kwargs)):
                torch.testing.assert_close(a.to_dense(), b.to_dense(), atol=0, rtol=0)
        plain.fine_budget = extended.fine_budget = 0.5
        torch.testing.assert_close(plain(img)[-1].to_dense(), extended(img)[-1].to_dense(),
                                   atol=0, rtol=0)


def randomise(module):
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.2, generator=torch.Generator().manual_seed(param.numel()))


@pytest.mark.parametrize('token_packing', [True, False])
def test_coarse_embed_batched_equals_each_image_alone(token_packing):
    _, model = pair(token_packing=token_packing)
    randomise(model.coarse_embed)
    img = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(2))
    masks = varied_masks()
    with torch.no_grad():
        batched = model(img, fine_mask=masks)
        assert len(set(batched[0].num_tokens.tolist())) == 3
        assert (batched[0].layout.packed is not None) == token_packing
        for index in range(3):
            alone = model(img[index:index + 1], fine_mask=masks[index:index + 1])
            torch.testing.assert_close(batched[-1].to_dense()[index:index + 1],
                                       alone[-1].to_dense(), atol=2e-5, rtol=0)


def test_coarse_token_sees_detail_below_the_pooled_patch():
    """A pixel checkerboard averages to zero over every 2x2 block: the pooled coarse patch, and
    so today's coarse token, cannot see it; the detail residual does."""
    plain, extended = pair(force_scale='coarse')
    randomise(extended.coarse_embed)
    img = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing='ij')
    textured = img + 0.5 * (1 - 2 * ((rows + cols) % 2)).float()
    torch.testing.assert_close(F.avg_pool2d(img, 2), F.avg_pool2d(textured, 2))
    with torch.no_grad():
        torch.testing.assert_close(plain(img)[0].tokens, plain(textured)[0].tokens)
        assert (extended(img)[0].tokens - extended(textured)[0].tokens).abs().max() > 1e-2


def test_coarse_embed_macs_counted_per_coarse_token():
    plain, extended = pair()
    img = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    masks = varied_masks()
    with torch.no_grad():
        base = layout_macs(plain, plain(img, fine_mask=masks)[0].layout)
        more = layout_macs(extended, extended(img, fine_mask=masks)[0].layout)
    dims = 48
    per_token = 4 * (3 * 16 * 16) * dims + 4 * dims * dims + dims * dims
    assert extended.coarse_embed.macs_per_token == per_token
    coarse = (~masks).flatten(1).sum(1).double()
    torch.testing.assert_close(more - base, coarse * per_token)
    # what mmengine's counter sees in the module itself (the fine embeddings are the patch
    # embedding's, counted separately above as 4 * C * S_f^2 * D)
    from mmseg_msvit.analysis import count_macs_with_mmengine
    counted = count_macs_with_mmengine(extended.coarse_embed, (torch.randn(1, 4, dims), ))
    assert counted == 4 * dims * dims + dims * dims


def test_coarse_embed_trains_and_freezes_with_the_patch_embedding():
    _, model = pair()
    model.train()
    img = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    model(img, fine_mask=torch.zeros(2, 2, 2, dtype=torch.bool))[-1].to_dense().sum().backward()
    # at zero initialisation the output layer gets gradient (the residual's input is not zero)
    assert model.coarse_embed.proj.weight.grad.abs().sum() > 0
    assert model.coarse_embed.scale_embed.grad.abs().sum() > 0
    frozen = tiny(coarse_detail=True, frozen_stages=0)
    assert not any(p.requires_grad for p in frozen.coarse_embed.parameters())


def test_coarse_embed_arguments_are_checked():
    with pytest.raises(ValueError, match='coarse_detail must be True or False'):
        tiny(coarse_detail=1)
    with pytest.raises(ValueError, match='nothing to add'):
        CoarseTokenEmbed(48, 2, 768, detail=False, scale_embed=False)


def test_timm_checkpoint_loads_with_only_new_parts_missing(tmp_path):
    import timm
    torch.manual_seed(0)
    vit = timm.create_model('vit_tiny_patch16_224', pretrained=False)
    path = tmp_path / 'vit.pth'
    torch.save(vit.state_dict(), path)
    model = MSViT(arch='tiny', coarse_detail=True, coarse_scale_embed=True,
                  init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    reference = MSViT(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    reference.init_weights()
    model.eval(), reference.eval()
    img = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    mask = torch.tensor([[[True, False, False], [False, True, False]]])
    with torch.no_grad():
        torch.testing.assert_close(model(img, fine_mask=mask)[0].tokens,
                                   reference(img, fine_mask=mask)[0].tokens, atol=0, rtol=0)


# ------------------------------------------------------------------------------ distillation
def test_distill_loss_is_kl_of_tempered_softmax():
    loss = DenseDistillLoss(temperature=2.0, loss_weight=0.5)
    logits = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(7))
    assert loss(logits, logits)['loss_distill'].abs() < 1e-6
    other = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(8))
    value = loss(other, logits)['loss_distill']
    # reference: torch's KL(teacher || student) per pixel, mean over pixels, x T^2
    reference = F.kl_div(F.log_softmax(other / 2, 1), F.log_softmax(logits / 2, 1),
                         log_target=True, reduction='none').sum(1).mean() * 4
    torch.testing.assert_close(value, 0.5 * reference)
    student = other.clone().requires_grad_()
    loss(student, logits)['loss_distill'].backward()
    with torch.no_grad():  # one small step against the gradient lowers the loss
        lower = loss(student - 0.1 * student.grad, logits)['loss_distill']
    assert lower < value
    features = DenseDistillLoss(loss_weight=0.0, feature_weight=2.0)
    maps = [torch.ones(1, 2, 3, 3)]
    out = features(logits, logits, [m * 2 for m in maps], maps)
    assert set(out) == {'loss_distill_feat'}
    torch.testing.assert_close(out['loss_distill_feat'], torch.tensor(2.0))


@pytest.mark.parametrize('kwargs, message', [
    (dict(temperature=0), 'temperature must be a number > 0'),
    (dict(loss_weight=-1), 'loss_weight must be a number >= 0'),
    (dict(loss_weight=0, feature_weight=0), 'nothing to distil'),
    (dict(teacher_checkpoint=3), 'teacher_checkpoint must be a path'),
    (dict(teacher='ema'), "teacher must be 'checkpoint' or 'self'"),
    (dict(teacher='self', teacher_checkpoint='a.pth'), "teacher='self' takes no"),
    (dict(student_task_loss='no'), 'student_task_loss must be True or False'),
    (dict(student_task_loss=False), "student_task_loss=False needs teacher='self'"),
    (dict(teacher='self', shared_grad_scale=1.5), 'shared_grad_scale must be a number in'),
    (dict(teacher='self', shared_grad_scale=True), 'shared_grad_scale must be a number in'),
    (dict(shared_grad_scale=0.5), "shared_grad_scale needs teacher='self'"),
    (dict(teacher='self', dense_running_stats=1), 'dense_running_stats must be True or False'),
    (dict(dense_running_stats=True), "dense_running_stats needs teacher='self'"),
])
def test_distill_loss_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenseDistillLoss(**kwargs)


def _segmentor_with_distill(tmp_path, **distill):
    from test_segmentor import build, segmentor_cfg
    dense = build(segmentor_cfg(backbone=dict(segmentor_cfg()['backbone'], force_scale='fine'),
                                gate_loss=None))
    path = tmp_path / 'dense.pth'
    torch.save(dict(state_dict=dense.state_dict()), path)
    cfg = segmentor_cfg(
        backbone=dict(segmentor_cfg()['backbone'], gate=dict(type='ContentGate'),
                      fine_budget=0.5, coarse_detail=True),
        gate_loss=None, distill=dict(type='DenseDistillLoss', teacher_checkpoint=str(path),
                                     **distill))
    return dense, build(cfg), path


def test_segmentor_distils_from_a_frozen_dense_teacher(tmp_path):
    from test_segmentor import make_batch
    dense, model, _ = _segmentor_with_distill(tmp_path, feature_weight=1.0)
    teacher = model.distill_teacher
    # the teacher is no parameter and no checkpoint entry of the model
    assert not any(name.startswith('distill') for name in model.state_dict())
    own = {id(p) for p in model.parameters()}
    assert not any(id(p) in own for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    data = model.data_preprocessor(make_batch(), True)
    dense.eval()
    with torch.no_grad():
        logits, maps = model.distill.teacher_outputs(data['inputs'], with_maps=True)
        expected = dense.decode_head.forward(dense.extract_feat(data['inputs']))
    torch.testing.assert_close(logits, expected)
    assert len(maps) == 2 and maps[0].shape == (2, 48, 4, 4)
    model.train()
    losses = model.loss(data['inputs'], data['data_samples'])
    assert {'loss_distill', 'loss_distill_feat', 'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
    assert losses['loss_distill'] > 0
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert model.backbone.coarse_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training  # model.train() leaves the teacher in eval mode
    model.to(torch.float64)  # the teacher moves and casts with the model (no hand moving)
    assert all(p.dtype == torch.float64 for p in teacher.parameters())
    assert not any(name.startswith('distill') for name in model.state_dict())


def test_distill_needs_a_teacher_checkpoint(tmp_path):
    from test_segmentor import build, segmentor_cfg
    cfg = segmentor_cfg(gate_loss=None, distill=dict(type='DenseDistillLoss'))
    with pytest.raises(ValueError, match='teacher_checkpoint, or load_from'):
        build(cfg)
    from mmengine.config import Config
    config = Config(dict(model=copy.deepcopy(cfg), load_from=str(tmp_path / 'dense.pth')))
    fill_distill_teacher(config)
    assert config.model.distill.teacher_checkpoint == str(tmp_path / 'dense.pth')
    given = Config(dict(model=dict(distill=dict(teacher_checkpoint='a.pth')), load_from='b.pth'))
    fill_distill_teacher(given)
    assert given.model.distill.teacher_checkpoint == 'a.pth'
    # one stage (teacher='self'): no teacher file, but step 2 must start from step 1's model
    one_stage = Config(dict(model=dict(distill=dict(teacher='self'), backbone=dict()),
                            load_from='b.pth'))
    fill_distill_teacher(one_stage)
    assert one_stage.model.distill.get('teacher_checkpoint') is None


def _one_stage_cfg(backbone=None, **distill):
    """The test segmentor with the content gate, coarse-token detail and in-place distillation
    (``teacher='self'``, logits + features) under the given DenseDistillLoss options."""
    from test_segmentor import segmentor_cfg
    return segmentor_cfg(
        backbone=dict(segmentor_cfg()['backbone'], gate=dict(type='ContentGate'),
                      fine_budget=0.5, coarse_detail=True, **(backbone or {})),
        gate_loss=None, distill=dict(type='DenseDistillLoss', teacher='self', feature_weight=1.0,
                                     **distill))


def test_in_place_distillation_trains_the_dense_pass_and_teaches_with_it_detached():
    """teacher='self': no frozen copy; the model's own dense pass gets the task loss and, detached,
    teaches the mixed-scale pass."""
    from test_segmentor import build, make_batch
    model = build(_one_stage_cfg())
    assert model.distill_teacher is None  # nothing loaded, nothing copied
    data = model.data_preprocessor(make_batch(), True)
    model.train()
    losses = model.loss(data['inputs'], data['data_samples'])
    assert {'dense.decode.loss_ce', 'dense.aux.loss_ce', 'decode.loss_ce', 'loss_distill',
            'loss_distill_feat'} <= set(losses)
    # the distillation targets carry no gradient: its loss moves only the mixed-scale pass
    dense_losses, teacher_logits, teacher_maps = model._dense_pass(data['inputs'],
                                                                   data['data_samples'])
    assert dense_losses['dense.decode.loss_ce'].requires_grad
    assert not teacher_logits.requires_grad and not any(m.requires_grad for m in teacher_maps)
    model.zero_grad()
    losses['loss_distill'].backward(retain_graph=True)
    grad_distill = model.backbone.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    losses['dense.decode.loss_ce'].backward()
    grad_dense = model.backbone.blocks[0].attn.qkv.weight.grad.clone()
    assert grad_distill.abs().sum() > 0 and grad_dense.abs().sum() > 0
    assert model.backbone.coarse_embed.proj.weight.grad is None or \
        model.backbone.coarse_embed.proj.weight.grad.abs().sum() == 0  # dense pass: no coarse


def test_student_task_loss_false_teaches_the_mixed_pass_by_the_dense_pass_alone():
    """student_task_loss=False (slimmable networks' way): the mixed-scale pass gets no task loss
    (neither decode nor auxiliary head), only the distillation; the dense pass keeps its own,
    and the losses are the same values as with the task loss, less those two."""
    from test_segmentor import build, make_batch
    losses = {}
    for task in (True, False):
        cfg = _one_stage_cfg(student_task_loss=task)
        torch.manual_seed(0)
        model = build(cfg).train()
        data = model.data_preprocessor(make_batch(), True)
        torch.manual_seed(1)
        losses[task] = model.loss(data['inputs'], data['data_samples'])
    student_task = {k for k in losses[True] if k.startswith(('decode.', 'aux.'))}
    assert {'decode.loss_ce', 'aux.loss_ce'} <= student_task
    assert set(losses[False]) == set(losses[True]) - student_task
    for key, value in losses[False].items():
        torch.testing.assert_close(value, losses[True][key])
    # the distillation alone reaches what only the mixed pass uses (the coarse tokens' extras)
    model.zero_grad()
    losses[False]['loss_distill'].backward()
    assert model.backbone.patch_embed.coarse_embed.proj.weight.grad.abs().sum() > 0


def test_shared_grad_scale_scales_what_the_mixed_pass_sends_into_the_shared_weights():
    """shared_grad_scale: the forward (every loss value) is unchanged; the shared weights' gradient
    is the dense pass' plus ``scale`` times the mixed pass'; the coarse-only parts (the
    coarse-token embedding) get the mixed pass' gradient whole; at 0 the shared weights follow the
    dense pass alone."""
    from test_segmentor import build, make_batch
    shared = ('backbone.blocks.0.attn.qkv.weight', 'backbone.patch_embed.pos_embed',
              'decode_head.convs.0.conv.weight', 'auxiliary_head.conv_seg.weight')
    coarse = 'backbone.patch_embed.coarse_embed.proj.weight'  # (reduce: zero until proj moves)
    grads, values = {}, {}
    for scale in (1.0, 0.5, 0.0, 'dense'):
        cfg = _one_stage_cfg(shared_grad_scale=1.0 if scale == 'dense' else scale)
        torch.manual_seed(0)
        model = build(cfg).train()
        data = model.data_preprocessor(make_batch(), True)
        torch.manual_seed(1)
        losses = model.loss(data['inputs'], data['data_samples'])
        if scale == 'dense':  # the dense pass' losses alone
            losses = {k: v for k, v in losses.items() if k.startswith('dense.')}
        values[scale] = losses
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        params = dict(model.named_parameters())
        grads[scale] = {name: params[name].grad.clone() for name in shared}
        grads[scale][coarse] = params[coarse].grad
    for key, value in values[1.0].items():
        torch.testing.assert_close(values[0.0][key], value)
        torch.testing.assert_close(values[0.5][key], value)
    for name in shared:
        dense, whole = grads['dense'][name], grads[1.0][name]
        assert (whole - dense).abs().sum() > 0  # the mixed pass reaches it at scale 1
        torch.testing.assert_close(grads[0.0][name], dense)
        torch.testing.assert_close(grads[0.5][name], dense + 0.5 * (whole - dense))
    assert grads['dense'][coarse] is None  # the dense pass has no coarse tokens
    assert grads[1.0][coarse].abs().sum() > 0
    torch.testing.assert_close(grads[0.0][coarse], grads[1.0][coarse])
    torch.testing.assert_close(grads[0.5][coarse], grads[1.0][coarse])


def test_dense_running_stats_records_batchnorm_statistics_from_the_dense_pass_alone():
    """dense_running_stats=True: after a training step the BatchNorm running statistics are
    those the dense pass alone records; without it the mixed pass moves them too."""
    from test_segmentor import build, make_batch
    stats = {}
    for case in ('dense_stats', 'dense_stats_scaled', 'both', 'dense_pass_only'):
        cfg = _one_stage_cfg(shared_grad_scale=0.25 if 'scaled' in case else 1.0,
                             dense_running_stats=case.startswith('dense_stats'))
        torch.manual_seed(0)
        model = build(cfg).train()
        data = model.data_preprocessor(make_batch(), True)
        norm = model.decode_head.convs[0].bn
        before = norm.running_mean.clone()
        torch.manual_seed(1)
        if case == 'dense_pass_only':
            model._dense_pass(data['inputs'], data['data_samples'])
        else:
            model.loss(data['inputs'], data['data_samples'])
        assert norm.momentum == 0.1  # restored after the mixed pass
        stats[case] = (norm.running_mean.clone(), norm.running_var.clone())
    assert not torch.equal(stats['dense_pass_only'][0], before)
    for case in ('dense_stats', 'dense_stats_scaled'):  # also through functional_call
        for a, b in zip(stats[case], stats['dense_pass_only']):
            torch.testing.assert_close(a, b)
    assert not torch.allclose(stats['both'][0], stats['dense_pass_only'][0])


@pytest.mark.parametrize('scale', [0.0, 0.25])
def test_shared_grad_scale_with_gradient_checkpointing(scale):
    """with_cp recomputes the blocks during backward, after functional_call has put the weights
    back: the gradients are those without checkpointing (a detached weight would break it)."""
    from test_segmentor import build, make_batch
    grads = {}
    for with_cp in (False, True):
        cfg = _one_stage_cfg(dict(with_cp=with_cp), shared_grad_scale=scale)
        torch.manual_seed(0)
        model = build(cfg).train()
        data = model.data_preprocessor(make_batch(), True)
        torch.manual_seed(1)
        losses = model.loss(data['inputs'], data['data_samples'])
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        grads[with_cp] = {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}
    assert set(grads[True]) == set(grads[False])
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, msg=name)


# ------------------------------------------------------------------------------ unpooling
def test_coarse_unpool_starts_unchanged_and_gives_each_cell_its_own_feature():
    from mmseg_msvit.models import MixedScaleToDense
    torch.manual_seed(0)
    backbone = tiny().eval()
    plain = MixedScaleToDense()
    neck = MixedScaleToDense(in_channels=48, num_taps=2, coarse_unpool=True)
    img = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(9))  # not x32
    mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(10)) > 0.5
    with torch.no_grad():
        feats = backbone(img, fine_mask=mask)
        for a, b in zip(plain(feats), neck(feats)):  # zero at the start: exactly the copy
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        randomise(neck.unpool)
        unpooled = neck(feats)
        copied = plain(feats)
    assert unpooled[0].shape == copied[0].shape == (2, 48, 5, 7)
    cells = mask.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :5, :7]
    for tap, (a, b) in enumerate(zip(unpooled, copied)):
        extra = a - b
        assert extra.abs().sum(1)[cells].max() == 0  # fine cells untouched
        # a coarse cell (y, x) adds row (y % 2) * 2 + x % 2 of the region's Linear(D, 4D)
        layer = neck.unpool[tap]
        for batch, y, x in torch.nonzero(~cells)[:5].tolist():
            token = b[batch, :, y, x]  # the coarse token (copied to every cell of its region)
            out = layer(token).view(2, 2, 48)[y % 2, x % 2]
            torch.testing.assert_close(extra[batch, :, y, x], out, atol=1e-5, rtol=1e-4)
    layout = feats[0].layout
    assert neck.unpool_macs(layout) == layout.num_regions * 2 * 48 * 4 * 48
    with pytest.raises(ValueError, match='coarse_unpool needs in_channels'):
        MixedScaleToDense(coarse_unpool=True)


def test_coarse_extra_is_computed_from_each_tokens_own_region():
    """The residual a coarse token gets is coarse_embed applied to ITS region's fine patches,
    embedded by the shared patch embedding (checked against a direct computation)."""
    _, model = pair()
    randomise(model.coarse_embed)
    img = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(11))
    masks = varied_masks()
    with torch.no_grad():
        decision = ScaleDecision.from_mask(masks, 4)
        tokens = model.patch_embed(img, decision, pack=False).tokens
        bare = copy.deepcopy(model.patch_embed)  # the same embedding without the extras
        bare.coarse_embed = None
        plain = bare(img, decision, pack=False).tokens
        for batch in range(3):
            coarse_regions = torch.nonzero(~masks[batch].flatten()).flatten().tolist()
            for rank, region in enumerate(coarse_regions):  # coarse tokens come first
                row, col = divmod(region, 4)
                patches = img[batch, :, 32 * row:32 * row + 32, 32 * col:32 * col + 32]
                fine = torch.stack([patches[:, 16 * i:16 * i + 16, 16 * j:16 * j + 16]
                                    for i in range(2) for j in range(2)])
                embedded = model.patch_embed.proj(fine).flatten(1)  # (4, D)
                expected = model.coarse_embed(embedded[None])[0]
                torch.testing.assert_close(tokens[batch, 1 + rank] - plain[batch, 1 + rank],
                                           expected, atol=1e-5, rtol=1e-4)
