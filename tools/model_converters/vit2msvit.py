"""Convert a ViT checkpoint (timm/DeiT, mmseg or mmpretrain key names) into a timm-named backbone
state dict that MSViT loads with init_cfg=dict(type='Pretrained', checkpoint=DST).

    python tools/model_converters/vit2msvit.py SRC DST [--force]

SRC may be a bare backbone state dict, a segmentor/classifier checkpoint (``backbone.`` prefix)
or a DeiT ``{'model': ...}`` container; ``.pth``/``.pt``/``.bin`` or ``.safetensors``. It is read
as data only (never unpickled as code). The renaming is
:func:`mmseg_msvit.models.checkpoints.to_timm_vit`, the same one ``init_cfg`` applies when it is
given SRC directly, so converting offline changes nothing in the weights: it gives a file in one
well-known layout (timm's) that is smaller than a full training checkpoint. An mmseg ViT without
a patch-embedding bias (its default ``patch_bias=False``) gets a zero bias. DST is written
atomically (``.safetensors`` when its name ends so, a ``torch.save`` file otherwise); it is never
the source, and an existing DST is replaced only with ``--force``.

LayerNorm eps is not stored in a checkpoint: mmseg's ``norm_cfg=dict(type='LN')`` means 1e-5,
timm's and mmpretrain's 1e-6; set ``MSViT(norm_eps=...)`` to the source model's value.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import torch  # noqa: E402

from mmseg_msvit.cli import check_output_path, tool_parser  # noqa: E402
from mmseg_msvit.engine.fileio import atomic_write, atomic_write_bytes  # noqa: E402
from mmseg_msvit.models.checkpoints import (checkpoint_to_timm_vit,  # noqa: E402
                                            read_checkpoint, state_dict_of, vit_depth)

_BIAS_KEYS = ('patch_embed.proj.bias', 'patch_embed.projection.bias')


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('src', help='ViT checkpoint to convert (timm/DeiT, mmseg or mmpretrain '
                        'names; bare, with a backbone. prefix, or in a {"model": ...} container)')
    parser.add_argument('dst', help='backbone state dict to write, timm key names (.pth, or '
                        '.safetensors)')
    parser.add_argument('--force', action='store_true',
                        help='replace DST if it exists (never the source checkpoint)')
    return parser.parse_args(argv)


def convert(src: str):
    """Read ``src`` and rename its ViT weights to timm's names.

    Returns:
        tuple: (timm-named state dict, source format, whether a zero patch bias was added)
    """
    source = state_dict_of(read_checkpoint(src, 'vit2msvit: source checkpoint'))
    if not source:
        raise ValueError(f'vit2msvit: source checkpoint {src!r} holds no model weights')
    state, kind = checkpoint_to_timm_vit(source, 'vit2msvit: source checkpoint', src)
    bias_added = not any(k.endswith(_BIAS_KEYS) for k in source)
    return state, kind, bias_added


def save(state: dict, dst: str) -> None:
    """Write ``state`` to ``dst`` atomically (safetensors by name, torch.save otherwise)."""
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if dst.endswith('.safetensors'):
        from safetensors.torch import save as to_bytes
        atomic_write_bytes(dst, to_bytes(state))
    else:
        atomic_write(dst, lambda f: torch.save(state, f))


def main(argv=None):
    args = parse_args(argv)
    check_output_path('vit2msvit', args.src, args.dst, args.force, 'vit_msvit.pth')
    state, kind, bias_added = convert(args.src)
    proj = state['patch_embed.proj.weight']
    depth = vit_depth(state)
    save(state, args.dst)
    print(f'[vit2msvit] {args.src} ({kind} key names) -> {args.dst}: {len(state)} tensors, '
          f'embed width {proj.shape[0]}, depth {depth}, patch {proj.shape[-2]}x{proj.shape[-1]}, '
          f"patch-embedding bias {'added as zeros' if bias_added else 'from the source'}")
    if kind == 'mmseg':
        print("[vit2msvit] note: LayerNorm eps is not in the file; mmseg's norm_cfg=dict("
              "type='LN') means 1e-5 (MSViT's default is 1e-6): if the source model used it, "
              'set MSViT(norm_eps=1e-5)')
    return state


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
