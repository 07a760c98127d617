"""Every weight file the project reads or writes, in one place, read as data.

* :func:`read_checkpoint` - ``torch.load(weights_only=True)`` (or safetensors) with errors that
  say what a file is not; nothing read from a checkpoint is ever executed (mmengine stores the
  training config as Python text in ``meta['cfg']``: it is parsed with :mod:`ast`, never run).
* :func:`describe_checkpoint`, :func:`check_covers`, :func:`load_model_weights` - say what a file
  is (a gate file, a classification model, a backbone only) and refuse one that lacks weights a
  model needs for evaluation.
* :func:`load_pretrained` - a timm/DeiT, mmseg or mmpretrain ViT checkpoint (alone or inside a
  segmentor/classifier checkpoint) into an :class:`MSViT` (:func:`to_timm_vit` renames the keys;
  position embeddings are resized by the backbone's ``load_state_dict`` pre-hook, so mmengine's
  ``load_checkpoint`` gets the same resize).
* Gate files (:func:`extract_gate`, :func:`save_gate`, :func:`load_gate`): move a trained gate
  between models. The gate reads pixels, so a gate trained with one ViT (any task, any width)
  loads into another, as long as the patch sizes and the input normalisation match; both are
  stored with the gate and checked on load (never a silent load). Gate file layout (plain tensors
  and Python values)::

    {'state_dict': {'mlp.0.weight': ..., ...},          # MixedScaleGate keys
     'meta': {'coarse_patch_size': 32, 'fine_patch_size': 16, 'in_channels': 3,
              'hidden_dims': [256, 256], 'mean': [...], 'std': [...], 'bgr_to_rgb': True,
              'source': 'path/of/the/source.pth'},
     'gbas_prior': {'mu_logit': ..., 'tau_logit': ...}}  # optional
"""
import ast
import math
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log

from ..engine.fileio import atomic_write

#: parameters a model may lack in a checkpoint and still be evaluated correctly:
#: the GBaS prior (training state of the gate loss) and the auxiliary head (training only)
EVAL_OPTIONAL_PREFIXES = ('gate_loss.', 'auxiliary_head.')
#: parts a checkpoint may lack at the START of a training run (``load_from``): they train from
#: their initialisation (a new gate; the coarse-token embedding and the neck's unpooling, which
#: start at zero and leave the loaded model's function unchanged)
FRESH_AT_TRAINING_START = ('backbone.gate.', 'backbone.coarse_embed.', 'neck.unpool.')


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for what it was given to."""


def read_checkpoint(path: str, what: str = 'checkpoint', map_location='cpu'):
    """Load ``path`` as data (``weights_only=True``) with errors that say what the file is not.

    ``weights_only=True`` is passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` does not
    turn it off.

    Raises:
        FileNotFoundError: no such file; IsADirectoryError: a folder.
        CheckpointError: empty, not a PyTorch/safetensors file, or holding objects other than
            tensors and plain values (refused, never unpickled as code).
    """
    if osp.isdir(path):
        raise IsADirectoryError(f'{what} {path!r} is a directory, not a file')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path!r} does not exist')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'{what} {path!r} is an empty file (0 bytes): not a checkpoint')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=map_location if isinstance(map_location, str)
                             else 'cpu')
        except Exception as err:  # noqa: BLE001  (any parse failure means: not safetensors)
            raise CheckpointError(f'{what} {path!r} is not a valid safetensors file: {err}'
                                  ) from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if re.search(r'unsupported (global|class)', str(err), re.IGNORECASE):
            raise CheckpointError(
                f'{what} {path!r} was refused: it holds objects other than tensors and plain '
                f'values, and loading them would run code from the file ({_unsupported(err)}). '
                'It was not loaded.') from None
        if re.search(r'checkpoint asks for|Can only build|call reduce for unrecognized',
                     str(err)):  # an allowed name used in a refused way
            detail = str(err).partition('WeightsUnpickler error:')[2].strip() or str(err)
            reason = detail.splitlines()[0] if detail.strip() else 'unsupported content'
            raise CheckpointError(
                f'{what} {path!r} was refused: it holds objects other than tensors and plain '
                f'values ({reason.rstrip(".")}). It was not loaded.') from None
        raise CheckpointError(f'{what} {path!r} is not a PyTorch checkpoint (its bytes are not '
                              'a saved tensor file); it was not loaded') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f'{what} {path!r} is not a PyTorch checkpoint (truncated or '
                              f'another kind of file: {first}); it was not loaded') from None


def _unsupported(err: Exception) -> str:
    match = re.search(r'unsupported (?:global:? )?GLOBAL ([\w.]+)', str(err), re.IGNORECASE)
    return f'it asks for {match.group(1)}' if match else 'unsupported content'


def state_dict_of(checkpoint) -> Dict[str, torch.Tensor]:
    """The parameter dict of a loaded checkpoint (``state_dict``/``model``/``module`` unwrapped,
    a leading ``module.`` stripped)."""
    state = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        return {}
    return {(k[len('module.'):] if k.startswith('module.') else k): v
            for k, v in state.items() if isinstance(k, str)}


def describe_checkpoint(checkpoint) -> str:
    """A short phrase saying what kind of file a loaded checkpoint looks like."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('meta'), dict) and \
            'coarse_patch_size' in checkpoint['meta'] and 'state_dict' in checkpoint:
        return 'a gate file (written by tools/transfer_gate.py)'
    keys = list(state_dict_of(checkpoint))
    if not keys:
        return 'a file without model weights'
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has('decode_head.'):
        kind = 'a segmentation model'
        if not has('backbone.gate.'):
            kind += ' without a gate'
        return kind
    if has('backbone.') and has('head.'):
        return 'a classification model'
    if has('backbone.'):
        return 'a backbone (with the segmentor/classifier prefix) only'
    if has('layers.') or has('patch_embed.projection'):
        return 'a backbone only (mmseg/mmpretrain key names)'
    if has('patch_embed.') or has('blocks.'):
        return 'a backbone only (timm/DeiT key names)'
    return f'an unknown set of {len(keys)} weights (first: {keys[0]})'


def _groups(keys: Iterable[str], depth: int = 2) -> List[str]:
    groups = []
    for key in keys:
        parts = key.split('.')
        group = '.'.join(parts[:depth]) + '.*' if len(parts) > depth else key
        if group not in groups:
            groups.append(group)
    return groups


def required_keys(model: torch.nn.Module) -> List[str]:
    """The weights ``model`` needs from a checkpoint to be evaluated: every parameter and
    buffer except :data:`EVAL_OPTIONAL_PREFIXES`, and the gate's when the backbone's scale is
    forced (the gate is not run then). A ``gate_init`` in the config does not make the gate
    optional: it is read when training starts, never for an evaluation, so the evaluated gate
    is the checkpoint's."""
    optional = list(EVAL_OPTIONAL_PREFIXES)
    backbone = getattr(model, 'backbone', None)
    gate = getattr(backbone, 'gate', None)
    if gate is not None and (getattr(backbone, 'force_scale', None) is not None or
                             not any(True for _ in gate.parameters())):
        optional.append('backbone.gate.')  # not run, or nothing to load
    return [k for k in model.state_dict() if not k.startswith(tuple(optional))]


def check_covers(model: torch.nn.Module, checkpoint, path: str) -> None:
    """Refuse a checkpoint that lacks weights ``model`` needs, naming what is missing and what
    the file looks like (a gate file, a classification model, a backbone only)."""
    state = state_dict_of(checkpoint)
    missing = [k for k in required_keys(model) if k not in state]
    if not missing:
        return
    kind = describe_checkpoint(checkpoint)
    advice = ''
    if kind.startswith('a gate file'):
        advice = (' To start a model from a gate file, set '
                  f"model.backbone.gate_init=dict(checkpoint={path!r}).")
    elif kind == 'a classification model':
        advice = (' To move its gate into a segmentor, run tools/transfer_gate.py and set '
                  'model.backbone.gate_init.')
    elif kind.startswith('a backbone'):
        advice = (" To start from backbone weights, set model.backbone.init_cfg=dict("
                  f"type='Pretrained', checkpoint={path!r}).")
    shown = _groups(missing)
    raise CheckpointError(
        f'checkpoint {path!r} does not cover this model: it is {kind}, and {len(missing)} '
        f'weights are missing ({", ".join(shown[:8])}{", ..." if len(shown) > 8 else ""}); '
        f'refusing to evaluate with random weights.{advice}')


def load_model_weights(model: torch.nn.Module, path: str,
                       checkpoint: Optional[dict] = None) -> dict:
    """Read ``path`` (or use the already loaded ``checkpoint``), check it covers ``model``
    (:func:`check_covers`) and load it; returns the loaded checkpoint."""
    if checkpoint is None:
        checkpoint = read_checkpoint(path)
    check_covers(model, checkpoint, path)
    state = state_dict_of(checkpoint)
    backbone = getattr(model, 'backbone', None)
    if hasattr(backbone, '_resize_pos_embed'):  # as load_state_dict's pre-hook would
        backbone._resize_pos_embed(state, 'backbone.')
    wanted = model.state_dict()
    required = set(required_keys(model))
    usable = {}
    for key, value in state.items():
        if key not in wanted:
            continue
        if tuple(value.shape) != tuple(wanted[key].shape):
            if key in required:
                raise CheckpointError(f'checkpoint {path!r}: {key} has shape '
                                      f'{tuple(value.shape)}, the model expects '
                                      f'{tuple(wanted[key].shape)}')
            continue  # training-only weights on another grid: not needed to evaluate
        usable[key] = value
    model.load_state_dict(usable, strict=False)
    return checkpoint


# ----------------------------------------------------------------------------- timm / DeiT
def load_timm_state_dict(path: str) -> dict:
    """Read a timm / DeiT / mmengine checkpoint file (.pth, .pt, .bin or .safetensors) as a flat
    parameter dict (``state_dict``/``model``/``module`` unwrapped, ``module.`` stripped)."""
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'MSViT: pretrained checkpoint {path!r} does not exist. Weights cannot be downloaded '
            'here: save a timm/DeiT state dict to a local file (e.g. '
            "`torch.save(timm.create_model('vit_small_patch16_224', pretrained=True)"
            ".state_dict(), 'vit_small.pth')` on a machine with internet) and point "
            'init_cfg.checkpoint at it.')
    return state_dict_of(read_checkpoint(path, 'MSViT: pretrained checkpoint'))


#: per-block key renames, mmseg VisionTransformer (vit2mmseg names) -> timm
_MMSEG_BLOCK = (('ln1.', 'norm1.'), ('ln2.', 'norm2.'), ('attn.attn.in_proj_weight', 'attn.qkv.weight'),
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
    missing = [k for k in missing if not k.startswith(('gate.', 'coarse_embed.'))]
    print_log(f'MSViT: loaded {path} ({kind} key names); missing (besides the gate and the '
              'coarse-token embedding, which start fresh): '
              f'{missing}; unexpected: {unexpected}', logger='current')
    return missing, unexpected


# ----------------------------------------------------------------------------- gate files
GATE_PREFIX = 'backbone.gate.'
PRIOR_PREFIX = 'gate_loss.'


def _literal_keywords(call: ast.Call) -> dict:
    """The keyword arguments of a ``dict(...)`` call node that are plain literals."""
    values = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            continue
        try:
            values[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:  # not a literal: skipped, never evaluated
            continue
    return values


def normalisation_from_cfg_text(cfg_text: str) -> Optional[dict]:
    """mean / std / bgr_to_rgb of the data preprocessor in the config text of a checkpoint.

    The text (mmengine stores the training config as Python source in ``meta['cfg']``) is only
    PARSED (:mod:`ast`), never executed. The model's own preprocessor wins: the
    ``data_preprocessor=dict(...)`` inside the top-level ``model = dict(...)`` (what the model
    was trained with, also when it was overridden), else a top-level ``data_preprocessor =
    dict(...)``; only one whose ``mean`` and ``std`` are literal lists counts. None when there
    is none.
    """
    tree = _parse_cfg_text(cfg_text)
    if tree is None:
        return None
    model_level, top_level = [], []
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or \
                not isinstance(node.targets[0], ast.Name):
            continue
        name = node.targets[0].id
        if name == 'data_preprocessor':
            top_level.append(node.value)
        elif name == 'model' and _is_dict_call(node.value):
            model_level += [k.value for k in node.value.keywords
                            if k.arg == 'data_preprocessor']
    for value in model_level + top_level:
        if not _is_dict_call(value):
            continue
        fields = _literal_keywords(value)
        if fields.get('mean') is None or fields.get('std') is None:
            continue
        return dict(mean=[float(v) for v in fields['mean']],
                    std=[float(v) for v in fields['std']],
                    bgr_to_rgb=bool(fields.get('bgr_to_rgb', fields.get('to_rgb', False))))
    return None


def literal_from_cfg_text(cfg_text: str, name: str):
    """The first literal value given to ``name=`` anywhere in a config's text (parsed with
    :mod:`ast`, never run); None when there is none."""
    tree = _parse_cfg_text(cfg_text)
    if tree is None:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == name:
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                continue
    return None


def _parse_cfg_text(cfg_text) -> Optional[ast.Module]:
    """The syntax tree of a config's text (only parsed), or None for no text or bad syntax."""
    if not isinstance(cfg_text, str) or not cfg_text:
        return None
    try:
        return ast.parse(cfg_text)
    except (SyntaxError, ValueError):
        return None


def _is_dict_call(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
        node.func.id == 'dict'


def _check_normalisation(normalisation: dict, in_channels: int, checkpoint: str) -> None:
    """mean / std: one finite value per input channel of the gate; std > 0."""
    for key in ('mean', 'std'):
        values = [float(v) for v in normalisation[key]]
        if len(values) != in_channels:
            raise ValueError(f'transfer_gate: {key} must hold {in_channels} values (one per '
                             f'input channel: the gate of {checkpoint!r} has in_channels='
                             f'{in_channels}), got {values}')
        if key == 'mean' and not all(math.isfinite(v) for v in values):
            raise ValueError(f'transfer_gate: mean must be finite, got {values}')
        if key == 'std' and not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError(f'transfer_gate: std must be finite and > 0 (inputs are divided by '
                             f'it), got {values}')


def extract_gate(checkpoint: str,
                 include_prior: bool = False,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 bgr_to_rgb: Optional[bool] = None) -> dict:
    """Build a gate checkpoint from a segmentation or classification checkpoint.

    The normalisation is read from the config stored in the checkpoint's meta; ``mean``/``std``/
    ``bgr_to_rgb`` override it (required when the checkpoint holds no config).
    """
    source = read_checkpoint(checkpoint, 'transfer_gate: checkpoint')
    if describe_checkpoint(source).startswith('a gate file'):
        raise ValueError(f'transfer_gate: {checkpoint!r} is already a gate file; load it with '
                         'model.backbone.gate_init=dict(checkpoint=...)')
    state = state_dict_of(source)
    gate_state = {k[len(GATE_PREFIX):]: v for k, v in state.items() if k.startswith(GATE_PREFIX)}
    if not gate_state:
        raise KeyError(f'transfer_gate: {checkpoint!r} has no {GATE_PREFIX}* keys; is it an '
                       'MSViT checkpoint with a gate (not a force_scale baseline)?')
    # 'mlp.<index>.weight', in layer order: numeric, not text ('mlp.10' after 'mlp.2')
    weight_keys = [k for k in gate_state if k.startswith('mlp.') and k.endswith('.weight')]
    try:
        weight_keys.sort(key=lambda k: int(k.split('.')[1]))
    except ValueError as err:
        raise KeyError(f'transfer_gate: unexpected gate keys in {checkpoint!r}: '
                       f'{sorted(gate_state)} (expected mlp.<index>.weight/bias)') from err
    weights = [gate_state[k] for k in weight_keys]
    first = gate_state['mlp.0.weight']
    proj = state.get('backbone.patch_embed.proj.weight')
    if proj is None:
        raise KeyError(f'transfer_gate: {checkpoint!r} has no backbone.patch_embed.proj.weight '
                       '(needed for the fine patch size)')
    in_channels, fine_patch_size = proj.shape[1], proj.shape[-1]
    coarse_patch_size = int(round((first.shape[1] / in_channels)**0.5))
    hidden = [int(w.shape[0]) for w in weights[:-1]]
    normalisation = normalisation_from_cfg_text(source.get('meta', {}).get('cfg', '')) or {}
    for key, value in (('mean', mean), ('std', std), ('bgr_to_rgb', bgr_to_rgb)):
        if value is not None:
            normalisation[key] = list(value) if key != 'bgr_to_rgb' else bool(value)
    missing = {'mean', 'std', 'bgr_to_rgb'} - set(normalisation)
    if missing:
        raise ValueError(f'transfer_gate: the input normalisation of {checkpoint!r} is unknown '
                         f'(missing {sorted(missing)}); pass --mean/--std/--bgr-to-rgb')
    _check_normalisation(normalisation, int(in_channels), checkpoint)
    gate = dict(
        state_dict=gate_state,
        meta=dict(coarse_patch_size=coarse_patch_size, fine_patch_size=int(fine_patch_size),
                  in_channels=int(in_channels), hidden_dims=hidden, source=checkpoint,
                  content_prior='content_weight' in gate_state,
                  **normalisation))
    if include_prior:
        prior = {k[len(PRIOR_PREFIX):]: v for k, v in state.items()
                 if k.startswith(PRIOR_PREFIX)}
        if not prior:
            raise KeyError(f'transfer_gate: {checkpoint!r} holds no GBaS prior ({PRIOR_PREFIX}*)')
        gate['gbas_prior'] = prior
    return gate


def save_gate(gate: dict, path: str) -> None:
    """Write atomically (:func:`mmseg_msvit.engine.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(gate, f))


def check_gate_compatible(meta: dict, coarse_patch_size: int, fine_patch_size: int,
                          in_channels: int, normalisation: Optional[dict], path: str) -> None:
    """Raise ValueError naming every mismatch between a gate checkpoint and its new model."""
    problems = []
    for key, value in (('coarse_patch_size', coarse_patch_size),
                       ('fine_patch_size', fine_patch_size), ('in_channels', in_channels)):
        if meta.get(key) != value:
            problems.append(f'{key}: gate {meta.get(key)}, model {value}')
    if normalisation is not None:
        for key in ('mean', 'std'):
            ours = [float(v) for v in normalisation[key]]
            theirs = [float(v) for v in meta.get(key, [])]
            if len(ours) != len(theirs) or any(abs(a - b) > 1e-4 for a, b in zip(ours, theirs)):
                problems.append(f'{key}: gate {theirs}, model {ours}')
        if bool(normalisation.get('bgr_to_rgb')) != bool(meta.get('bgr_to_rgb')):
            problems.append(f"bgr_to_rgb: gate {meta.get('bgr_to_rgb')}, model "
                            f"{normalisation.get('bgr_to_rgb')}")
    if problems:
        raise ValueError(f'gate checkpoint {path!r} does not fit this model: ' +
                         '; '.join(problems))


def load_gate(backbone, path: str, normalisation: Optional[dict] = None) -> dict:
    """Load a gate file written by ``tools/transfer_gate.py`` into ``backbone.gate``.

    Patch sizes and channels are checked against the backbone, the input normalisation against
    ``normalisation`` when given (the segmentor/classifier passes its data preprocessor's).

    Returns:
        dict: the gate file's meta.
    """
    gate = read_checkpoint(path, 'MSViT: gate checkpoint')
    kind = describe_checkpoint(gate)
    if not kind.startswith('a gate file'):
        raise ValueError(f'MSViT: gate_init checkpoint {path!r} is {kind}, not a gate file; '
                         f'extract its gate first: python tools/transfer_gate.py {path} '
                         "gate.pth, then set gate_init=dict(checkpoint='gate.pth')")
    check_gate_compatible(gate['meta'], backbone.coarse_patch_size, backbone.fine_patch_size,
                          backbone.in_channels, normalisation, path)
    ours = bool(getattr(backbone.gate, 'content_prior', False))
    if bool(gate['meta'].get('content_prior', False)) != ours:
        raise ValueError(f"MSViT: gate in {path!r} has content_prior="
                         f"{bool(gate['meta'].get('content_prior', False))}, this model's gate "
                         f'content_prior={ours}; set model.backbone.gate.content_prior to match')
    try:
        backbone.gate.load_state_dict(gate['state_dict'])
    except RuntimeError as err:
        raise ValueError(f'MSViT: gate in {path!r} (hidden_dims '
                         f"{gate['meta'].get('hidden_dims')}) does not match this model's "
                         f'gate (hidden_dims {list(backbone.gate.hidden_dims)}): {err}') from err
    return gate['meta']


def read_gate_meta(path: str) -> dict:
    """The meta of a gate file (for checks made after loading)."""
    return read_checkpoint(path, 'MSViT: gate checkpoint')['meta']
