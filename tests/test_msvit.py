"""MSViT core: gate, embedding, backbone, dense reconstruction."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmseg_msvit.models import (MixedScaleEmbed, MixedScaleFeatures, MixedScaleGate,
                                MixedScaleToDense, MSViT, coarsen)
from mmseg_msvit.models.policy import (ScaleDecision, relaxation_temperature,
                                      threshold_decisions)


def tiny_msvit(**kwargs):
    cfg = dict(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
               gate=dict(type='MixedScaleGate', hidden_dims=(16, )))
    cfg.update(kwargs)
    return MSViT(**cfg)


@pytest.fixture(scope='module')
def timm_vit_small():
    torch.manual_seed(0)
    return timm.create_model('vit_small_patch16_224', pretrained=False,
                             dynamic_img_size=True).eval()


@pytest.mark.parametrize('size', [(224, 224), (256, 320)])
def test_force_fine_is_timm_vit(timm_vit_small, size):
    model = MSViT(arch='small', force_scale='fine').eval()
    missing, unexpected = model.load_state_dict(timm_vit_small.state_dict(), strict=False)
    assert all(k.startswith('gate.') for k in missing) and missing
    assert sorted(unexpected) == ['head.bias', 'head.weight']
    img = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = timm_vit_small.forward_features(img)[:, 1:]
        (features, ) = model(img)
    assert features.tokens.shape == expected.shape
    torch.testing.assert_close(features.tokens, expected, atol=1e-5, rtol=0)
    dense = features.to_dense()
    assert dense.shape == (2, 384, size[0] // 16, size[1] // 16)
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=0)


def test_force_coarse_is_vit_on_pooled_image(timm_vit_small):
    model = MSViT(arch='small', force_scale='coarse').eval()
    model.load_state_dict(timm_vit_small.state_dict(), strict=False)
    img = torch.randn(1, 3, 256, 320, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        (features, ) = model(img)
        # reference: plain ViT/16 on the 2x2-average-pooled image with 2x2-averaged positions
        ref = timm_vit_small
        pooled = F.avg_pool2d(img, 2)
        patches = ref.patch_embed(pooled)  # (1, 8, 10, D), NHWC
        pos = timm.layers.resample_abs_pos_embed(ref.pos_embed, new_size=(16, 20),
                                                 old_size=(14, 14), num_prefix_tokens=1)
        grid = pos[:, 1:].reshape(1, 16, 20, -1).permute(0, 3, 1, 2)
        coarse_pos = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
        x = torch.cat([ref.cls_token + pos[:, :1], patches.flatten(1, 2) + coarse_pos], dim=1)
        x = ref.norm(ref.blocks(x))
    assert features.tokens.shape == (1, 80, 384)
    torch.testing.assert_close(features.tokens, x[:, 1:], atol=1e-5, rtol=0)
    assert features.num_tokens.tolist() == [80]
    # every coarse token is copied to its 2x2 cells
    dense = features.to_dense()
    torch.testing.assert_close(dense, F.interpolate(
        x[:, 1:].transpose(1, 2).reshape(1, 384, 8, 10), scale_factor=2, mode='nearest'))


@pytest.mark.parametrize('token_packing', [True, False])
def test_padding_leaks_nothing_between_images(token_packing):
    torch.manual_seed(3)
    model = tiny_msvit(out_indices=(0, 1), token_packing=token_packing).eval()
    img = torch.randn(3, 3, 96, 128)
    masks = torch.stack([torch.zeros(3, 4, dtype=torch.bool),
                         torch.rand(3, 4) > 0.5,
                         torch.ones(3, 4, dtype=torch.bool)])
    with torch.no_grad():
        batched = model(img, fine_mask=masks)
        assert len(set(batched[0].num_tokens.tolist())) == 3, 'images must differ in length'
        for index in range(3):
            alone = model(img[index:index + 1], fine_mask=masks[index:index + 1])
            for tap_batched, tap_alone in zip(batched, alone):
                count = int(tap_alone.num_tokens)
                torch.testing.assert_close(tap_batched.tokens[index, :count],
                                           tap_alone.tokens[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(tap_batched.to_dense()[index],
                                           tap_alone.to_dense()[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(tap_batched.cls_token[index],
                                           tap_alone.cls_token[0], atol=1e-5, rtol=1e-5)


def test_to_dense_places_fine_and_coarse_tokens_exactly():
    """Each 16x16 cell holds a constant value; a linear 'embedding' that averages its patch."""
    embed = MixedScaleEmbed((96, 128), 16, 32, in_channels=3, embed_dims=1)
    nn.init.constant_(embed.proj.weight, 1 / (3 * 16 * 16))
    nn.init.zeros_(embed.proj.bias)  # no CLS token, no positions: the cells' own values
    cell_values = torch.randn(2, 1, 6, 8)
    img = F.interpolate(cell_values, scale_factor=16, mode='nearest').expand(-1, 3, -1, -1)
    fine_mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(4)) > 0.5
    fine_mask[0, 0, 0], fine_mask[1, 0, 0] = True, False  # both kinds in both images
    tokens, _, layout = embed(img, ScaleDecision.from_mask(fine_mask, 4), pack=False)
    dense = MixedScaleFeatures(tokens[:, 1:], layout).to_dense()  # (2, 1, 6, 8)
    coarse_means = coarsen(cell_values, 2)
    expected = torch.where(F.interpolate(fine_mask[:, None].float(), scale_factor=2) > 0,
                           cell_values, F.interpolate(coarse_means, scale_factor=2))
    torch.testing.assert_close(dense, expected)
    # token counts: 1 per coarse region, 4 per fine region
    assert layout.num_tokens.tolist() == (4 * fine_mask.flatten(1).sum(1) +
                                          (~fine_mask).flatten(1).sum(1)).tolist()
    # each coarse token sits on exactly its 4 cells, each fine token on exactly one
    for image in range(2):
        counts = torch.bincount(layout.cell_to_token[image],
                                minlength=int(layout.num_tokens[image]))
        assert counts.sum() == 48
        assert sorted(set(counts.tolist())) <= [1, 4]
        assert int((counts == 4).sum()) == int((~fine_mask[image]).sum())


def test_task_loss_reaches_the_gate_and_eval_is_deterministic():
    torch.manual_seed(5)
    model = tiny_msvit(out_indices=(1, ))
    img = torch.randn(2, 3, 64, 96)
    model.train()
    (features, ) = model(img)
    features.to_dense().square().mean().backward()
    gate_grads = [p.grad for p in model.gate.parameters()]
    assert all(g is not None for g in gate_grads)
    assert sum(g.abs().sum() for g in gate_grads) > 0
    logits = features.layout.gate_logits  # returned with the features, not kept on the module
    assert logits.shape == (2, 2, 3) and logits.requires_grad

    model.eval()
    with torch.no_grad():
        first = model(img)[0]
        second = model(img)[0]
    torch.testing.assert_close(first.tokens, second.tokens)
    assert torch.equal(first.fine_mask,
                       torch.sigmoid(first.layout.gate_logits) > model.gate_threshold)


def test_no_per_forward_state_is_kept_on_the_module():
    model = tiny_msvit(out_indices=(1, )).eval()
    before = set(vars(model))
    with torch.no_grad():
        (features, ) = model(torch.randn(2, 3, 64, 64))
    assert set(vars(model)) == before
    assert not any(name.startswith('last_') or name == '_recording' for name in vars(model))
    forced = model(torch.randn(1, 3, 64, 64), fine_mask=torch.ones(1, 2, 2, dtype=torch.bool))
    assert forced[0].layout.gate_logits is None  # the gate did not run


def test_explicit_decisions_can_carry_a_straight_through_value():
    torch.manual_seed(1)
    model = tiny_msvit(out_indices=(1, )).eval()
    img = torch.randn(1, 3, 64, 64)
    mask = torch.tensor([[[True, False], [False, True]]])
    value = mask.float().requires_grad_(True)
    (with_value, ) = model(img, fine_mask=mask, fine_value=value)
    (without, ) = model(img, fine_mask=mask)
    torch.testing.assert_close(with_value.tokens, without.tokens)
    with_value.to_dense().square().sum().backward()
    assert value.grad is not None and value.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='fine_value needs a fine_mask of the same shape'):
        model(img, fine_value=value)


def test_gate_threshold_trades_tokens_without_rebuilding():
    torch.manual_seed(6)
    model = tiny_msvit().eval()
    img = torch.randn(2, 3, 128, 128)
    counts = []
    with torch.no_grad():
        probs = torch.sigmoid(model.gate(img))
        for threshold in (0.0, float(probs.median()), 1.0):
            model.gate_threshold = threshold
            counts.append(int(model(img)[0].num_tokens.sum()))
    assert counts[0] == 2 * 64 and counts[-1] == 2 * 16
    assert counts[0] > counts[1] > counts[2]


def test_gate_shape_init_fraction_and_cost():
    gate = MixedScaleGate(init_fine_fraction=0.25)
    img = torch.randn(2, 3, 64, 96)
    logits = gate(img)
    assert logits.shape == (2, 2, 3)
    assert abs(torch.sigmoid(logits).mean().item() - 0.25) < 0.05
    # gate MACs at 224 px: < 2% of a dense ViT-S/16 (4.6 GMACs)
    assert gate.macs_per_region * 49 / 4.6e9 < 0.02
    gate.train()
    fine_mask, fine_value = threshold_decisions(logits, 0.5, relaxation_temperature(gate))
    assert fine_mask.dtype == torch.bool
    torch.testing.assert_close(fine_value.detach(), fine_mask.float())
    with pytest.raises(ValueError, match='init_fine_fraction'):
        MixedScaleGate(init_fine_fraction=1.0)
    with pytest.raises(ValueError, match='temperature'):
        MixedScaleGate(temperature=0)


def test_unaligned_input_is_padded_and_cropped():
    model = tiny_msvit(out_indices=(0, 1)).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 70, 100))
    assert features[0].fine_mask.shape == (1, 3, 4)
    assert features[0].to_dense().shape == (1, 48, 5, 7)


def test_neck_dense_and_multilevel():
    model = tiny_msvit(out_indices=(0, 1)).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, 64, 64))
        plain = MixedScaleToDense()(features)
        assert [tuple(t.shape) for t in plain] == [(2, 48, 4, 4)] * 2
        neck = MixedScaleToDense(in_channels=[48, 48], out_channels=32, scales=[2, 0.5])
        neck.init_weights()
        levels = neck(features)
    assert [tuple(t.shape) for t in levels] == [(2, 32, 8, 8), (2, 32, 2, 2)]
    with pytest.raises(TypeError, match='MixedScaleFeatures'):
        MixedScaleToDense()([torch.zeros(1, 2, 3, 3)])
    with pytest.raises(ValueError, match='in_channels'):
        MixedScaleToDense(scales=[1])


def test_with_cp_frozen_stages_and_freeze_gate():
    torch.manual_seed(7)
    img = torch.randn(2, 3, 64, 64)
    plain = tiny_msvit(drop_rate=0.0)
    cp = tiny_msvit(with_cp=True)
    cp.load_state_dict(plain.state_dict())
    masks = torch.tensor([[[True, False], [False, True]], [[False, False], [False, False]]])
    outs = [m.train()(img, fine_mask=masks)[0].to_dense() for m in (plain, cp)]
    torch.testing.assert_close(outs[0], outs[1])
    for model, out in zip((plain, cp), outs):
        out.sum().backward()
    torch.testing.assert_close(plain.blocks[0].attn.qkv.weight.grad,
                               cp.blocks[0].attn.qkv.weight.grad)

    frozen = tiny_msvit(frozen_stages=1, freeze_gate=True).train()
    assert not frozen.pos_embed.requires_grad and not frozen.cls_token.requires_grad
    assert not any(p.requires_grad for p in frozen.blocks[0].parameters())
    assert all(p.requires_grad for p in frozen.blocks[1].parameters())
    assert not any(p.requires_grad for p in frozen.gate.parameters())
    assert not frozen.gate.training and not frozen.blocks[0].training


def _save_timm_tiny(path, img_size=224):
    vit = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=img_size)
    state = vit.state_dict()
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save({'model': state}, path)  # DeiT-style container
    return state


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_pretrained_timm_checkpoint_loads_with_pos_resize(tmp_path, suffix):
    path = tmp_path / f'vit_tiny{suffix}'
    state = _save_timm_tiny(path)
    model = MSViT(arch='tiny', img_size=256,
                  init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, state['blocks.3.mlp.fc1.weight'])
    torch.testing.assert_close(model.patch_embed.proj.weight, state['patch_embed.proj.weight'])
    expected_pos = timm.layers.resample_abs_pos_embed(state['pos_embed'], new_size=(16, 16),
                                                      old_size=(14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.data, expected_pos)
    missing, unexpected = model.load_pretrained(str(path))
    assert missing == [] and sorted(unexpected) == ['head.bias', 'head.weight']


def test_bad_arguments_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match='coarse_patch_size=24.*fine_patch_size=16'):
        MSViT(arch='tiny', coarse_patch_size=24)
    with pytest.raises(ValueError, match="arch='huge'"):
        MSViT(arch='huge')
    with pytest.raises(ValueError, match="force_scale must be"):
        MSViT(arch='tiny', force_scale='medium')
    with pytest.raises(ValueError, match='out_indices contains 12'):
        MSViT(arch='tiny', out_indices=(12, ))
    path = tmp_path / 'vit_tiny.pth'
    _save_timm_tiny(path)
    small = MSViT(arch='small', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ValueError, match='embed width 192.*embed_dims=384'):
        small.init_weights()
    with pytest.raises(FileNotFoundError, match='does not exist'):
        MSViT(arch='tiny', init_cfg=dict(type='Pretrained',
                                         checkpoint=str(tmp_path / 'nope.pth'))).init_weights()
    model = tiny_msvit()
    with pytest.raises(ValueError, match='20x64 px is smaller than one coarse region'):
        model(torch.randn(1, 3, 20, 64))
    with pytest.raises(ValueError, match='fine_mask must be'):
        model(torch.randn(1, 3, 64, 64), fine_mask=torch.ones(1, 3, 3, dtype=torch.bool))


def small_msvit(**kwargs):
    cfg = dict(arch=dict(embed_dims=32, depth=2, num_heads=2), img_size=64,
               gate=dict(type='MixedScaleGate', hidden_dims=(8, )))
    cfg.update(kwargs)
    return MSViT(**cfg)


@pytest.mark.parametrize('kwargs, match', [
    (dict(img_size=0), r'img_size must be .*got 0'),
    (dict(img_size=-64), r'img_size must be .*got -64'),
    (dict(img_size=(64, 0)), r'img_size must be .*got \(64, 0\)'),
    (dict(img_size=64.0), r'img_size must be .*got 64.0'),
    (dict(in_channels=0), r'in_channels must be .*got 0'),
    (dict(fine_patch_size=0), r'fine_patch_size must be .*got 0'),
    (dict(coarse_patch_size=0), r'coarse_patch_size must be .*got 0'),
    (dict(num_heads=0), r'num_heads must be .*got 0'),
    (dict(embed_dims=0), r'embed_dims must be .*got 0'),
    (dict(embed_dims=-32), r'embed_dims must be .*got -32'),
    (dict(depth=0), r'depth must be .*got 0'),
    (dict(arch=dict(embed_dims=32, depth=0, num_heads=2)), r'depth must be .*got 0'),
    (dict(depth=2.0), r'depth must be .*got 2.0'),
    (dict(mlp_ratio=0), r'mlp_ratio must be .*got 0'),
    (dict(mlp_ratio=float('nan')), r'mlp_ratio must be .*got nan'),
    (dict(drop_rate=-0.1), r'drop_rate must be .*\[0, 1\).*got -0.1'),
    (dict(drop_rate=1.0), r'drop_rate must be .*\[0, 1\).*got 1.0'),
    (dict(attn_drop_rate=1.5), r'attn_drop_rate must be .*\[0, 1\).*got 1.5'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be .*\[0, 1\).*got -0.1'),
    (dict(drop_path_rate=1.0), r'drop_path_rate must be .*\[0, 1\).*got 1.0'),
    (dict(drop_path_rate=float('nan')), r'drop_path_rate must be .*got nan'),
    (dict(frozen_stages=3), r'frozen_stages must be .*-1\.\.2.*got 3'),
    (dict(frozen_stages=-2), r'frozen_stages must be .*got -2'),
    (dict(out_indices=1.0), r'out_indices must be .*got 1.0'),
    (dict(out_indices=True), r'out_indices must be .*got True'),
    (dict(out_indices=(0, 1.0)), r'out_indices must be .*got \(0, 1.0\)'),
])
def test_bad_constructor_arguments_name_argument_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_msvit(**kwargs)


def test_valid_edge_arguments_still_build():
    model = small_msvit(img_size=(64, 96), frozen_stages=2, out_indices=[0, -1],
                        drop_path_rate=0.0, drop_rate=0.0, attn_drop_rate=0.0)
    assert model.out_indices == [0, 1] and model.img_size == (64, 96)
    assert small_msvit(frozen_stages=-1).frozen_stages == -1


@pytest.mark.parametrize('value', [-0.1, 1.5, 5, float('nan'), '0.5', True, None])
def test_gate_threshold_is_validated_at_build_and_on_assignment(value):
    with pytest.raises(ValueError, match=r'gate_threshold must be .*\[0, 1\].*got'):
        small_msvit(gate_threshold=value)
    model = small_msvit()
    with pytest.raises(ValueError, match=r'gate_threshold must be .*\[0, 1\].*got'):
        model.gate_threshold = value
    assert model.gate_threshold == 0.5  # unchanged by the refused assignment


def test_gate_threshold_accepts_unit_interval():
    model = small_msvit(gate_threshold=0)
    assert model.gate_threshold == 0.0
    model.gate_threshold = 1
    assert model.gate_threshold == 1.0 and isinstance(model.gate_threshold, float)


@pytest.mark.parametrize('dtype', [torch.float32, torch.int64, torch.uint8])
def test_fine_mask_must_be_bool(dtype):
    model = small_msvit().eval()
    mask = torch.ones(1, 2, 2, dtype=dtype)
    with pytest.raises(ValueError, match=r'fine_mask must be a bool tensor.*' + str(dtype)):
        model(torch.randn(1, 3, 64, 64), fine_mask=mask)
    with pytest.raises(ValueError, match='fine_mask must be a bool tensor'):
        model(torch.randn(1, 3, 64, 64), fine_mask=torch.full((1, 2, 2), float('nan')))


def test_forward_refuses_empty_batch_and_bad_image_shape():
    model = small_msvit().eval()
    with pytest.raises(ValueError, match=r'img must hold at least one image.*\(0, 3, 64, 64\)'):
        model(torch.randn(0, 3, 64, 64))
    with pytest.raises(ValueError, match=r'img must be a 4-D .*\(3, 64, 64\)'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r'img must have in_channels=3 channels.*\(1, 1, 64, 64\)'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r'img is a torch.uint8 tensor; .*normalised floating'):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'img is torch.float16 but the weights are torch.float32'):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.float16))
    with torch.autocast('cpu', dtype=torch.bfloat16):  # mixed precision stays allowed
        assert model(torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16))[0].tokens.shape[0] == 1


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=0), r'in_channels must be .*got 0'),
    (dict(in_channels=2.5), r'in_channels must be .*got 2.5'),
    (dict(hidden_dims=(8, 0)), r'hidden_dims must be .*got \(8, 0\)'),
    (dict(hidden_dims=(8, -1)), r'hidden_dims must be .*got \(8, -1\)'),
    (dict(hidden_dims=(8.0, )), r'hidden_dims must be .*got \(8.0,\)'),
    (dict(hidden_dims=256), r'hidden_dims must be .*got 256'),
    (dict(coarse_patch_size=0), r'coarse_patch_size must be >= 1'),
])
def test_gate_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixedScaleGate(**kwargs)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_relaxation_noise_keeps_confident_logits_and_their_gradient(dtype):
    """The relaxed logit is (logit + logistic noise) / T with gradient 1 / T for every logit,
    also confident ones in bfloat16 (--amp), where torch's LogitRelaxedBernoulli, going through
    clamped probabilities, would cut the noise and return no gradient beyond |logit| ~ 5."""
    from mmseg_msvit.models.policy import _relaxed_logits
    logits = torch.tensor([2.0, -6.0, 8.0, 12.0, 30.0], dtype=dtype).repeat(4000, 1)
    logits.requires_grad_(True)
    torch.manual_seed(0)
    relaxed = _relaxed_logits(logits, 0.5)
    relaxed.sum().backward()
    assert torch.equal(logits.grad, torch.full_like(logits, 2.0))
    noise = (relaxed.detach().float() * 0.5 - logits.detach().float())
    # logistic noise: mean 0, std pi / sqrt(3), the same for every logit (nothing clamped)
    assert noise.mean(0).abs().max() < 0.15
    assert ((noise.std(0) - torch.pi / 3**0.5).abs() < 0.2).all()
