"""Packed token sequences: the transformer on the useful tokens of all images at once.

In threshold mode the images of a batch need different numbers of tokens. Padding every image to
the longest one makes the MLPs, LayerNorms and projections work on padding too (docs/benchmarks.md).
Packing concatenates the tokens of all images into ONE sequence, ``(1, N, D)`` with ``N`` the sum
of the images' lengths (CLS included), so everything but attention runs on exactly the useful
tokens; attention stays within each image:

* CUDA, fp16/bf16, no attention dropout: ``torch.nn.attention.varlen.varlen_attn`` with the
  cumulative sequence lengths (one kernel for the whole batch);
* elsewhere (the CPU, fp32): ``scaled_dot_product_attention`` per image on slices of the packed
  projections, the fastest of the CPU paths compared in docs/method.md, section 1 (nested jagged
  tensors, a padded batch with a key mask).

:func:`packed_block_forward` is timm's ``Block.forward`` for a packed sequence: the same modules
in the same order (stochastic depth drawn per image, as timm's ``DropPath`` draws per sample),
so a packed batch gives each image exactly what it gets alone.
"""
from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F


class PackedSequences(NamedTuple):
    """Where each image's sequence sits in a packed batch.

    Attributes:
        lengths (tuple[int]): tokens of every image, CLS included (host values: the slices of
            the CPU attention and the shapes are built from them).
        starts (Tensor): (B,) long, position of each image's CLS token in the packed sequence.
        cu_seqlens (Tensor): (B + 1,) int32 cumulative lengths (varlen attention's format).
        image_of_token (Tensor): (N,) long, the image each packed token belongs to.
    """
    lengths: Tuple[int, ...]
    starts: torch.Tensor
    cu_seqlens: torch.Tensor
    image_of_token: torch.Tensor

    @property
    def total(self) -> int:
        """N, the packed sequence length."""
        return sum(self.lengths)

    @property
    def max_length(self) -> int:
        return max(self.lengths)


def pack_lengths(lengths: Tuple[int, ...], device) -> PackedSequences:
    """:class:`PackedSequences` for images of ``lengths`` tokens each (CLS included)."""
    sizes = torch.tensor(lengths, dtype=torch.long, device=device)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.long, device=device)
    cu[1:] = sizes.cumsum(0)
    image_of_token = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), sizes, output_size=sum(lengths))
    return PackedSequences(tuple(int(n) for n in lengths), cu[:-1], cu.to(torch.int32),
                           image_of_token)


def _use_varlen(q: torch.Tensor, dropout: float) -> bool:
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16) or dropout > 0:
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:  # torch < 2.9
        return False
    return True


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences,
                     dropout: float = 0.0) -> torch.Tensor:
    """Attention within each image of a packed sequence.

    Args:
        q, k, v (Tensor): (N, H, d) packed queries, keys, values.
        packed (PackedSequences): the images' extents.
        dropout (float): attention dropout (training only).

    Returns:
        Tensor: (N, H, d).
    """
    if _use_varlen(q, dropout):
        from torch.nn.attention.varlen import varlen_attn
        longest = packed.max_length
        return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), packed.cu_seqlens,
                           packed.cu_seqlens, longest, longest)
    outs, start = [], 0
    for length in packed.lengths:
        end = start + length
        # (1, H, n, d) views of this image's slice; SDPA needs no mask
        out = F.scaled_dot_product_attention(
            q[start:end].transpose(0, 1)[None], k[start:end].transpose(0, 1)[None],
            v[start:end].transpose(0, 1)[None], dropout_p=dropout)
        outs.append(out[0].transpose(0, 1))
        start = end
    return torch.cat(outs, 0)


#: the submodules of timm's ``Block`` and ``Attention`` that :func:`packed_block_forward`
#: re-implements (checked on timm 1.0.16, the first with ``Block.forward(x, attn_mask)``, and
#: 1.0.17 to 1.0.31)
PACKED_BLOCK_PARTS = ('norm1', 'attn', 'ls1', 'drop_path1', 'norm2', 'mlp', 'ls2', 'drop_path2')
PACKED_ATTENTION_PARTS = ('qkv', 'q_norm', 'k_norm', 'attn_drop', 'norm', 'proj', 'proj_drop',
                          'gate')


def check_packable(block) -> None:
    """Refuse a transformer block that :func:`packed_block_forward` does not reproduce exactly:
    one with a submodule it does not know (a newer timm may add one), so that packed tokens can
    never silently skip a computation."""
    import timm
    attn = getattr(block, 'attn', None)
    unknown = [f'block.{name}' for name, _ in block.named_children()
               if name not in PACKED_BLOCK_PARTS]
    if attn is not None:
        unknown += [f'block.attn.{name}' for name, _ in attn.named_children()
                    if name not in PACKED_ATTENTION_PARTS]
    missing = [name for name in ('num_heads', 'head_dim', 'qkv', 'q_norm', 'k_norm', 'norm',
                                 'proj')
               if attn is None or not hasattr(attn, name)]
    if unknown or missing:
        raise ValueError(
            f'MSViT: token packing re-implements timm\'s Block, and this timm '
            f'({timm.__version__}) Block differs from it (unknown parts: {unknown or "none"}; '
            f'missing: {missing or "none"}); set token_packing=False (padded batches, timm\'s '
            'own forward) or use a timm version listed in setup.py')


def _attention(attn, x: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """timm ``Attention.forward`` on a packed (N, D) sequence."""
    tokens = x.shape[0]
    gate = attn.gate(x).sigmoid() if getattr(attn, 'gate', None) is not None else None
    qkv = attn.qkv(x).reshape(tokens, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.unbind(1)
    # q_norm / k_norm act on the head dimension, as in timm's (B, H, N, d) layout
    q, k = attn.q_norm(q), attn.k_norm(k)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = packed_attention(q, k, v, packed, dropout).reshape(tokens, -1)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def _drop_path(drop_path, x: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """timm ``DropPath`` with one draw per image (not one for the whole packed sequence)."""
    prob = float(getattr(drop_path, 'drop_prob', 0.0) or 0.0)
    if prob == 0.0 or not drop_path.training:
        return x
    keep = 1.0 - prob
    per_image = x.new_empty(len(packed.lengths)).bernoulli_(keep)
    if getattr(drop_path, 'scale_by_keep', True) and keep > 0.0:
        per_image = per_image / keep
    return x * per_image[packed.image_of_token][:, None]


def packed_block_forward(block, x: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
    """timm ``Block.forward`` on a packed sequence.

    Args:
        block: a timm ``Block`` (``norm1, attn, ls1, drop_path1, norm2, mlp, ls2, drop_path2``).
        x (Tensor): (1, N, D) packed tokens.
        packed (PackedSequences): the images' extents.

    Returns:
        Tensor: (1, N, D).
    """
    h = x[0]
    h = h + _drop_path(block.drop_path1, block.ls1(_attention(block.attn, block.norm1(h), packed)),
                       packed)
    h = h + _drop_path(block.drop_path2, block.ls2(block.mlp(block.norm2(h))), packed)
    return h[None]
