"""Packed tokens: a batch of images with different token counts runs as one sequence, no padding,
and every image gets exactly what it gets alone (eval and training, gradients included)."""
import pytest
import torch

from mmseg_msvit.models import MSViT, ScaleDecision
from mmseg_msvit.models.packed import pack_lengths, packed_attention


def small_msvit(**kwargs):
    cfg = dict(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64, out_indices=(0, 1),
               gate=dict(type='MixedScaleGate', hidden_dims=(16, )))
    cfg.update(kwargs)
    return MSViT(**cfg)


def mixed_masks():
    torch.manual_seed(0)
    masks = torch.stack([torch.zeros(3, 4, dtype=torch.bool), torch.rand(3, 4) > 0.5,
                         torch.ones(3, 4, dtype=torch.bool), torch.rand(3, 4) > 0.7])
    return torch.randn(4, 3, 96, 128), masks


def test_a_mixed_batch_is_packed_without_padding():
    model = small_msvit().eval()
    img, masks = mixed_masks()
    with torch.no_grad():
        tokens = model.embed(*model.pad_input(img)[:1], ScaleDecision.from_mask(masks, 4))
    layout = tokens.layout
    counts = layout.num_tokens.tolist()
    assert len(set(counts)) > 1
    # one sequence holding exactly the useful tokens: a CLS and the active tokens of each image
    assert tokens.tokens.shape == (1, sum(counts) + 4, 48) and tokens.attn_mask is None
    assert layout.packed.lengths == tuple(n + 1 for n in counts)
    assert layout.packed.starts.tolist() == [0] + torch.tensor(
        counts).add(1).cumsum(0)[:-1].tolist()
    # equal counts are neither packed nor padded
    same = masks[2:3].expand(4, -1, -1)
    with torch.no_grad():
        plain = model.embed(*model.pad_input(img)[:1], ScaleDecision.from_mask(same, 4))
    assert plain.layout.packed is None and plain.attn_mask is None
    assert plain.tokens.shape == (4, 1 + 48, 48)


def test_packed_training_step_equals_each_image_alone_gradients_included():
    torch.manual_seed(1)
    model = small_msvit().train()
    img, masks = mixed_masks()
    weights = torch.randn(4, 48, 6, 8)

    def loss_of(features, index=None):
        total = 0
        for tap in features:
            dense = tap.to_dense()
            w = weights if index is None else weights[index:index + 1]
            total = total + (dense * w).sum() + tap.cls_token.square().sum()
        return total

    value = masks.float().requires_grad_(True)  # straight-through decisions: the gate's path
    batched = loss_of(model(img, fine_mask=masks, fine_value=value))
    batched.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    value_grad = value.grad.clone()
    model.zero_grad()
    alone_total, alone_value = 0.0, []
    for index in range(4):
        v = masks[index:index + 1].float().requires_grad_(True)
        loss = loss_of(model(img[index:index + 1], fine_mask=masks[index:index + 1],
                             fine_value=v), index)
        loss.backward()
        alone_total += float(loss.detach())
        alone_value.append(v.grad)
    assert float(batched) == pytest.approx(alone_total, rel=1e-5)
    torch.testing.assert_close(value_grad, torch.cat(alone_value), atol=1e-4, rtol=1e-4)
    assert grads and set(grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, atol=1e-4,
                                   rtol=1e-4, msg=name)


def test_packed_and_padded_paths_give_the_same_features():
    torch.manual_seed(2)
    packed = small_msvit().eval()
    padded = small_msvit(token_packing=False).eval()
    padded.load_state_dict(packed.state_dict())
    img, masks = mixed_masks()
    with torch.no_grad():
        for a, b in zip(packed(img, fine_mask=masks), padded(img, fine_mask=masks)):
            assert a.layout.packed is not None and b.layout.packed is None
            valid = a.valid[..., None]  # the padded path leaves its padding unspecified
            assert torch.equal(a.tokens * ~valid, torch.zeros_like(a.tokens))
            torch.testing.assert_close(a.tokens * valid, b.tokens * valid, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.to_dense(), b.to_dense(), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.cls_token, b.cls_token, atol=1e-5, rtol=1e-5)


def test_threshold_mode_gate_packs_and_matches_images_alone():
    torch.manual_seed(3)
    model = small_msvit(gate=dict(type='ContentGate')).eval()
    img = torch.randn(3, 3, 96, 128)
    # content energy: flat image 0 all coarse, image 1 all fine, image 2 half and half
    img[0] *= 0.01
    img[1] *= 3
    img[2, :, :, :64] *= 3
    with torch.no_grad():
        batched = model(img)
        assert batched[0].layout.packed is not None
        assert len(set(batched[0].num_tokens.tolist())) == 3
        for index in range(3):
            alone = model(img[index:index + 1])
            torch.testing.assert_close(batched[1].to_dense()[index], alone[1].to_dense()[0],
                                       atol=1e-5, rtol=1e-5)


def test_stochastic_depth_draws_per_image_when_packed():
    from timm.layers import DropPath

    from mmseg_msvit.models.packed import _drop_path
    torch.manual_seed(4)
    packed = pack_lengths((3, 5, 2, 4), 'cpu')
    drop = DropPath(0.5).train()
    patterns = set()
    for _ in range(20):
        out = _drop_path(drop, torch.ones(14, 6), packed)
        per_image = [out[packed.image_of_token == i] for i in range(4)]
        # one draw per image: every token of an image is kept (scaled by 1/keep) or dropped
        for values in per_image:
            assert values.unique().numel() == 1 and float(values[0, 0]) in (0.0, 2.0)
        patterns.add(tuple(float(v[0, 0]) for v in per_image))
    # and the images of one forward are drawn independently, as timm's DropPath per sample
    assert any(len(set(p)) > 1 for p in patterns)
    assert torch.equal(_drop_path(drop.eval(), torch.ones(14, 6), packed), torch.ones(14, 6))


def test_packed_attention_stays_within_each_image():
    torch.manual_seed(5)
    lengths = (3, 5, 2)
    packed = pack_lengths(lengths, 'cpu')
    q, k, v = (torch.randn(10, 2, 4) for _ in range(3))
    out = packed_attention(q, k, v, packed)
    start = 0
    for n in lengths:
        s = slice(start, start + n)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q[s].transpose(0, 1), k[s].transpose(0, 1), v[s].transpose(0, 1)).transpose(0, 1)
        torch.testing.assert_close(out[s], expected)
        start += n
    assert packed.cu_seqlens.tolist() == [0, 3, 8, 10]
    assert packed.image_of_token.tolist() == [0] * 3 + [1] * 5 + [2] * 2


def test_a_block_with_parts_packing_does_not_know_is_refused():
    """Packed tokens re-implement timm's Block from its parts: a timm whose Block gains a part
    (or loses one) must fail loudly at construction, never skip a computation silently."""
    import torch.nn as nn
    from timm.models.vision_transformer import Block

    from mmseg_msvit.models.packed import check_packable
    block = Block(dim=48, num_heads=3)
    check_packable(block)  # today's timm: every part known
    block.attn.rope = nn.Identity()
    with pytest.raises(ValueError, match=r"unknown parts: \['block.attn.rope'\].*token_packing=False"):
        check_packable(block)
    plain = Block(dim=48, num_heads=3)
    del plain.attn.norm
    with pytest.raises(ValueError, match=r"missing: \['norm'\]"):
        check_packable(plain)
