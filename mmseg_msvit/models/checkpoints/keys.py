"""ViT key formats: which library's names a state dict uses, their conversion to timm's names,
and loading a pretrained ViT into an :class:`MSViT`.

* :func:`vit_format`, :func:`to_timm_vit` - timm/DeiT, mmseg ``VisionTransformer`` and
  mmpretrain ``VisionTransformer`` key names (alone or inside a segmentor/classifier checkpoint).
* :func:`load_pretrained` - such a checkpoint into an :class:`MSViT`; position embeddings are
  resized by the backbone's ``load_state_dict`` pre-hook, so mmengine's ``load_checkpoint`` gets
  the same resize.
"""
from typing import Dict, Optional, Tuple

import torch
from mmengine.logging import print_log

from .reading import describe_checkpoint, load_timm_state_dict


#: per-block key renames, mmseg VisionTransformer (vit2mmseg names) -> timm
_MMSEG_BLOCK = (('ln1.', 'norm1.'), ('ln2.', 'norm2.'),
                ('attn.attn.in_proj_weight', 'attn.qkv.weight'),
                ('attn.attn.in_proj_bias', 'attn.qkv.bias'), ('attn.attn.out_proj.', 'attn.proj.'),
                ('ffn.layers.0.0.', 'mlp.fc1.'), ('ffn.layers.1.', 'mlp.fc2.'))
#: per-block key renames, mmpretrain VisionTransformer -> timm
_MMPRETRAIN_BLOCK = (('ln1.', 'norm1.'), ('ln2.', 'norm2.'), ('attn.qkv.', 'attn.qkv.'),
                     ('attn.proj.', 'attn.proj.'), ('ffn.layers.0.0.', 'mlp.fc1.'),
                     ('ffn.layers.1.', 'mlp.fc2.'))
#: wrappers whose backbone weights carry a prefix (segmentor / classifier checkpoints)
_WRAPPER_PREFIXES = ('backbone.', 'encoder.')


def vit_format(state: Dict[str, torch.Tensor]) -> str:
    """'timm', 'mmseg' or 'mmpretrain': whose ViT key names a backbone state dict uses."""
    if 'patch_embed.proj.weight' in state:
        return 'timm'
    if 'patch_embed.projection.weight' in state:
        if any('.attn.attn.in_proj_weight' in k for k in state):
            return 'mmseg'
        if any('.attn.qkv.weight' in k for k in state):
            return 'mmpretrain'
    raise KeyError('no ViT patch embedding (timm: patch_embed.proj.weight; mmseg/mmpretrain: '
                   'patch_embed.projection.weight) among the keys; it looks like '
                   f'{describe_checkpoint(state)}')


def _strip_wrapper(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The backbone's weights of a segmentor/classifier checkpoint (``backbone.`` prefix)."""
    if any(k.startswith(('patch_embed.', 'cls_token')) for k in state):
        return state
    for prefix in _WRAPPER_PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if any(k.startswith('patch_embed.') for k in inner):
            return inner
    return state


def to_timm_vit(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """A ViT state dict in timm's key names, from timm/DeiT, mmseg ``VisionTransformer``
    (the ``vit2mmseg`` names) or mmpretrain ``VisionTransformer`` checkpoints, bare or inside a
    segmentor/classifier checkpoint (``backbone.`` prefix).

    mmseg's default ``patch_bias=False`` means the patch embedding has no bias: it is written as
    zeros (timm's ViT has one), so the converted model computes the same function. Layouts
    without a timm counterpart (mmseg ``pre_norm``/``patch_norm``, mmpretrain layer scale or
    ``pre_norm``) are refused with the key that shows it. LayerNorm eps is not stored in a
    checkpoint: mmseg's ``norm_cfg=dict(type='LN')`` means 1e-5, mmpretrain's and timm's 1e-6;
    set ``MSViT(norm_eps=...)`` to the source model's value.

    Returns:
        tuple: (timm-named state dict, source format 'timm' | 'mmseg' | 'mmpretrain')
    """
    state = _strip_wrapper(dict(state))
    kind = vit_format(state)
    if kind == 'timm':
        return state, kind
    unsupported = [k for k in state if k.startswith(('ln_pre', 'pre_norm.', 'patch_embed.norm'))
                   or '.gamma' in k or '.ls1' in k]
    if unsupported:
        raise KeyError(f'{kind} ViT checkpoint with {unsupported[0]}: a pre-norm, patch norm or '
                       'layer scale has no counterpart in MSViT (a timm ViT); not converted')
    renames = _MMSEG_BLOCK if kind == 'mmseg' else _MMPRETRAIN_BLOCK
    out = {}
    for key, value in state.items():
        if key.startswith('layers.'):
            _, index, rest = key.split('.', 2)
            for old, new in renames:
                if rest.startswith(old):
                    out[f'blocks.{index}.{new}{rest[len(old):]}'] = value
                    break
            else:
                raise KeyError(f'{kind} ViT checkpoint: unexpected key {key!r}')
        elif key.startswith('patch_embed.projection.'):
            out['patch_embed.proj.' + key[len('patch_embed.projection.'):]] = value
        elif key.startswith('ln1.'):  # the final norm of both libraries
            out['norm.' + key[len('ln1.'):]] = value
        elif key in ('cls_token', 'pos_embed'):
            out[key] = value
        # anything else (heads, ln2 of avg_featmap) is not part of the backbone
    proj = out['patch_embed.proj.weight']
    if 'patch_embed.proj.bias' not in out:  # mmseg patch_bias=False
        out['patch_embed.proj.bias'] = torch.zeros(proj.shape[0], dtype=proj.dtype)
    return out, kind


def checkpoint_to_timm_vit(state: Dict[str, torch.Tensor], owner: str, path: str
                           ) -> Tuple[Dict[str, torch.Tensor], str]:
    """:func:`to_timm_vit` for the weights read from ``path``; an unrecognised layout is a
    KeyError that names ``owner`` and the file."""
    try:
        return to_timm_vit(state)
    except KeyError as err:
        raise KeyError(f'{owner} {path!r}: {err.args[0]}') from None


def vit_depth(state: Dict[str, torch.Tensor]) -> int:
    """Transformer blocks in a timm-named ViT state dict (``blocks.N.*``)."""
    return 1 + max((int(k.split('.')[1]) for k in state if k.startswith('blocks.')), default=-1)


def load_pretrained(backbone, path: str, prefix: Optional[str] = None) -> Tuple[list, list]:
    """Load a local ViT checkpoint into an MSViT ``backbone``: timm/DeiT, mmseg
    ``VisionTransformer`` or mmpretrain ``VisionTransformer`` weights, alone or inside a
    segmentor/classifier checkpoint (:func:`to_timm_vit`).

    The width and patch size must match (clear error); position embeddings of another grid are
    resized by the backbone's ``load_state_dict`` pre-hook.

    Returns:
        tuple: (missing_keys, unexpected_keys) of the load, the gate's keys left out.
    """
    state = load_timm_state_dict(path)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise KeyError(f'MSViT: no key of {path!r} starts with prefix={prefix!r}')
    state, kind = checkpoint_to_timm_vit(state, 'MSViT: pretrained checkpoint', path)
    proj = state['patch_embed.proj.weight']
    if proj.shape[0] != backbone.embed_dims:
        raise ValueError(f'MSViT: checkpoint {path!r} has embed width {proj.shape[0]}, the '
                         f'backbone has embed_dims={backbone.embed_dims}')
    expected = (backbone.in_channels, backbone.fine_patch_size, backbone.fine_patch_size)
    if tuple(proj.shape[1:]) != expected:
        raise ValueError(f'MSViT: checkpoint {path!r} patch embedding is '
                         f'{tuple(proj.shape[1:])} (C, p, p), the backbone expects {expected}')
    depth = vit_depth(state)
    if depth != backbone.depth:
        raise ValueError(f'MSViT: checkpoint {path!r} has {depth} transformer blocks, the '
                         f'backbone has depth={backbone.depth}')
    if backbone.patch_embed.proj.bias is None:  # patch_bias=False
        bias = state.pop('patch_embed.proj.bias', None)
        if bias is not None and bool(bias.abs().max() > 0):
            raise ValueError(f'MSViT: checkpoint {path!r} has a non-zero patch-embedding bias '
                             'but the backbone has patch_bias=False; set patch_bias=True')
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(('gate.', 'patch_embed.coarse_embed.'))]
    print_log(f'MSViT: loaded {path} ({kind} key names); missing (besides the gate and the '
              'coarse-token embedding, which start fresh): '
              f'{missing}; unexpected: {unexpected}', logger='current')
    return missing, unexpected
