"""Reading weight files as data: every checkpoint the project reads goes through here.

* :func:`read_checkpoint` - ``torch.load(weights_only=True)`` (or safetensors) with errors that
  say what a file is not; nothing read from a checkpoint is ever executed (mmengine stores the
  training config as Python text in ``meta['cfg']``: it is parsed with :mod:`ast`, never run,
  see :func:`normalisation_from_cfg_text` and :func:`literal_from_cfg_text`).
* :func:`describe_checkpoint`, :func:`check_covers`, :func:`load_model_weights` - say what a file
  is (a gate file, a classification model, a backbone only) and refuse one that lacks weights a
  model needs for evaluation.
* :func:`load_timm_state_dict` - the flat parameter dict of a local ViT checkpoint file.
"""
import ast
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import Dict, Iterable, List, Optional

import torch

from ...compat.checkpoint_globals import checked_after_loading

#: parameters a model may lack in a checkpoint and still be evaluated correctly:
#: the GBaS prior (training state of the gate loss) and the auxiliary head (training only)
EVAL_OPTIONAL_PREFIXES = ('gate_loss.', 'auxiliary_head.')
#: parts a checkpoint may lack at the START of a training run (``load_from``): they train from
#: their initialisation (a new gate; the coarse-token embedding and the neck's unpooling, which
#: start at zero and leave the loaded model's function unchanged). They are also the parts only
#: coarse tokens use: in-place distillation gives them the mixed pass' whole gradient
#: (``DenseDistillLoss(shared_grad_scale=...)``), so a prefix added here changes that too
FRESH_AT_TRAINING_START = ('backbone.gate.', 'backbone.patch_embed.coarse_embed.',
                           'neck.unpool.')


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
        return checked_after_loading(
            torch.load(path, map_location=map_location, weights_only=True))
    except pickle.UnpicklingError as err:
        raise refusal(err, what, path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f'{what} {path!r} is not a PyTorch checkpoint (truncated or '
                              f'another kind of file: {first}); it was not loaded') from None


def refusal(err: pickle.UnpicklingError, what: str, path: str) -> 'CheckpointError':
    """The one-sentence error for a file ``torch.load(weights_only=True)`` refused (torch's own
    message advises ``weights_only=False``, which would run the file's code)."""
    if re.search(r'unsupported (global|class)', str(err), re.IGNORECASE):
        return CheckpointError(
            f'{what} {path!r} was refused: it holds objects other than tensors and plain '
            f'values, and loading them would run code from the file ({_unsupported(err)}). '
            'It was not loaded.')
    if re.search(r'checkpoint asks for|Can only build|call reduce for unrecognized', str(err)):
        detail = str(err).partition('WeightsUnpickler error:')[2].strip() or str(err)
        reason = detail.splitlines()[0] if detail.strip() else 'unsupported content'
        return CheckpointError(
            f'{what} {path!r} was refused: it holds objects other than tensors and plain '
            f'values ({reason.rstrip(".")}). It was not loaded.')
    return CheckpointError(f'{what} {path!r} is not a PyTorch checkpoint (its bytes are not a '
                           'saved tensor file); it was not loaded')


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
    if has('decode_head.') and has('backbone.layers.'):
        return ('an mmseg ViT segmentor (mmseg VisionTransformer key names: backbone.layers.*, '
                'backbone.patch_embed.projection.*)')
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


def key_groups(keys: Iterable[str], depth: int = 2) -> List[str]:
    """Keys grouped by their first ``depth`` parts (``backbone.blocks.*``); one part more
    inside the embedding, whose parts are told apart (``backbone.patch_embed.coarse_embed.*``)."""
    groups = []
    for key in keys:
        parts = key.split('.')
        deep = depth + 1 if parts[1:2] == ['patch_embed'] else depth
        group = '.'.join(parts[:deep]) + '.*' if len(parts) > deep else key
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


#: key aliases: timm's top-level names and this project's older ones -> MSViT's
_KEY_ALIASES = (('cls_token', 'patch_embed.cls_token'), ('pos_embed', 'patch_embed.pos_embed'),
                ('coarse_embed.', 'patch_embed.coarse_embed.'))


def msvit_key(key: str) -> str:
    """A backbone state-dict key (relative to the backbone) under MSViT's name: timm's
    ``cls_token`` and ``pos_embed`` and the older ``coarse_embed.*`` live in the embedding
    (``patch_embed.*``); other keys as they are."""
    for old, new in _KEY_ALIASES:
        if key == old or (old.endswith('.') and key.startswith(old)):
            return new + key[len(old):]
    return key


def mmseg_neck_key(key: str) -> str:
    """A key of mmseg's ``MultiLevelNeck`` (relative to the neck: ``lateral_convs.*``,
    ``convs.*``), or of this neck's older checkpoints (``rescale.*``), under
    :class:`~mmseg_msvit.models.MixedScaleToDense`'s name (``multi_level.*``); other keys as
    they are."""
    if key.startswith(('lateral_convs.', 'convs.')):
        return 'multi_level.' + key
    if key.startswith('rescale.'):
        return 'multi_level.' + key[len('rescale.'):]
    return key


def rename_keys(state_dict: dict, prefix: str, key_fn) -> None:
    """In place, every key of ``state_dict`` under ``prefix`` renamed by ``key_fn`` (applied to
    the key without the prefix): the body of the modules' ``load_state_dict`` pre-hooks that
    read older or other libraries' names (:func:`msvit_key`, :func:`mmseg_neck_key`)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        ours = prefix + key_fn(key[len(prefix):])
        if ours != key:
            state_dict[ours] = state_dict.pop(key)


def loaded_key(key: str) -> str:
    """A segmentor or classifier checkpoint key under the name the model loads it as, as the
    modules' ``load_state_dict`` pre-hooks read it: mmseg's ``MultiLevelNeck`` keys and this
    project's older ``neck.rescale.*`` as ``MixedScaleToDense``'s (:func:`mmseg_neck_key`);
    timm's top-level ``backbone.cls_token`` / ``backbone.pos_embed`` and the older
    ``backbone.coarse_embed.*`` as the embedding's (:func:`msvit_key`). The one table of
    renames: the pre-hooks (:func:`rename_keys`) and ``CustomKeysCheckHook`` read it too."""
    if key.startswith('neck.'):
        return 'neck.' + mmseg_neck_key(key[len('neck.'):])
    if key.startswith('backbone.'):
        return 'backbone.' + msvit_key(key[len('backbone.'):])
    return key


def check_covers(model: torch.nn.Module, checkpoint, path: str) -> None:
    """Refuse a checkpoint that lacks weights ``model`` needs, naming what is missing and what
    the file looks like (a gate file, a classification model, a backbone only, an mmseg
    segmentor) and the converter to use."""
    error = uncovered_weights(model, checkpoint, path)
    if error is not None:
        raise error


def uncovered_weights(model: torch.nn.Module, checkpoint,
                      path: Optional[str] = None) -> Optional['CheckpointError']:
    """The :class:`CheckpointError` :func:`check_covers` raises for ``checkpoint`` (a loaded file
    or, with no ``path``, a state dict being loaded), or None when it covers ``model``."""
    state = {loaded_key(k) for k in state_dict_of(checkpoint)}
    missing = [k for k in required_keys(model) if k not in state]
    if not missing:
        return None
    kind = describe_checkpoint(checkpoint)
    subject = (f'checkpoint {path!r}' if path is not None else
               'the state dict loaded into this model (load_checkpoint / load_state_dict)')
    file = repr(path) if path is not None else "'CKPT'"
    advice = ''
    if kind.startswith('an mmseg ViT segmentor'):
        advice = (' Convert it whole (backbone, neck and heads) with tools/model_converters/'
                  'mmseg2msvit.py MMSEG_CONFIG CKPT OUT_DIR, or load it with '
                  'mmseg_msvit.apis.init_from_mmseg(MMSEG_CONFIG, CKPT).')
    elif kind.startswith('a gate file'):
        advice = (' To start a model from a gate file, set '
                  f"model.backbone.gate_init=dict(checkpoint={file}).")
    elif kind == 'a classification model':
        advice = (' To move its gate into a segmentor, run tools/transfer_gate.py and set '
                  'model.backbone.gate_init.')
    elif kind.startswith('a backbone'):
        advice = (" To start from backbone weights, set model.backbone.init_cfg=dict("
                  f"type='Pretrained', checkpoint={file}).")
    shown = key_groups(missing)
    return CheckpointError(
        f'{subject} does not cover this model: it is {kind}, and {len(missing)} '
        f'weights are missing ({", ".join(shown[:8])}{", ..." if len(shown) > 8 else ""}); '
        f'refusing to evaluate with random weights.{advice}')


def foreign_weights(model: torch.nn.Module, checkpoint) -> List[str]:
    """Weights of ``checkpoint`` that ``model`` does not have and that change what the trained
    model computed (the coarse-token embedding or the neck's unpooling of a recipe checkpoint
    given with a dense config, say); training-only parts (:data:`EVAL_OPTIONAL_PREFIXES`) and a
    gate the model does not run (forced scale, a parameter-free gate) are not counted."""
    ignorable = list(EVAL_OPTIONAL_PREFIXES)
    backbone = getattr(model, 'backbone', None)
    gate = getattr(backbone, 'gate', None)
    if gate is not None and (getattr(backbone, 'force_scale', None) is not None or
                             not any(True for _ in gate.parameters())):
        ignorable.append('backbone.gate.')
    wanted = model.state_dict()
    return [k for k in state_dict_of(checkpoint)
            if loaded_key(k) not in wanted and not k.startswith(tuple(ignorable))]


def check_no_foreign_weights(model: torch.nn.Module, checkpoint, path: str) -> None:
    """Refuse a checkpoint with weights the model lacks (:func:`foreign_weights`): evaluated,
    they would be dropped without a word and the model would not be the one that was trained."""
    foreign = foreign_weights(model, checkpoint)
    if not foreign:
        return
    shown = key_groups(foreign)
    raise CheckpointError(
        f'checkpoint {path!r} has {len(foreign)} weights this model does not have '
        f'({", ".join(shown[:6])}{", ..." if len(shown) > 6 else ""}): it was trained with '
        'another configuration (a recipe checkpoint given with a dense config?); dropping them '
        'would evaluate another model than the one trained. Give the config it was trained '
        'with.')


def load_model_weights(model: torch.nn.Module, path: str,
                       checkpoint: Optional[dict] = None) -> dict:
    """Read ``path`` (or use the already loaded ``checkpoint``), check it covers ``model``
    (:func:`check_covers`) and holds no weights the model lacks
    (:func:`check_no_foreign_weights`), and load it; returns the loaded checkpoint."""
    if checkpoint is None:
        checkpoint = read_checkpoint(path)
    check_covers(model, checkpoint, path)
    check_no_foreign_weights(model, checkpoint, path)
    state = {loaded_key(k): v for k, v in state_dict_of(checkpoint).items()}
    backbone = getattr(model, 'backbone', None)
    embed = getattr(backbone, 'patch_embed', None)
    if hasattr(embed, '_resize_pos_embed'):  # as load_state_dict's pre-hook would
        embed._resize_pos_embed(state, 'backbone.patch_embed.')
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


# ----------------------------------------------------------------------------- config text
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


#: packages whose modules a checkpoint's config text may name in ``custom_imports``
CONFIG_IMPORTS_ALLOWED = ('mmseg_msvit', 'mmseg', 'mmpretrain', 'mmengine', 'mmcv', 'mmdet')


def config_text_problem(cfg_text) -> Optional[str]:
    """Why a config text stored in a checkpoint is not plain data, or None when it is.

    mmengine executes such text (``Config.fromstring``: ``Runner.resume`` reads
    ``meta['config']``, its inferencers ``meta['cfg']`` when no config is given). Plain data is
    what mmengine itself writes (``cfg.pretty_text``): top-level ``name = value`` lines whose
    values are literals, ``dict(...)`` calls of literals and negative numbers, no name starting with
    ``_`` (``_base_`` would run other files) and ``custom_imports`` only of
    :data:`CONFIG_IMPORTS_ALLOWED` packages. Only parsed (:mod:`ast`), never run.
    """
    if not isinstance(cfg_text, str):
        return f'a {type(cfg_text).__name__}, not text'
    try:
        tree = ast.parse(cfg_text)
    except (SyntaxError, ValueError) as err:
        return f'not Python ({type(err).__name__})'

    def plain(node) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return all(plain(item) for item in node.elts)
        if isinstance(node, ast.Dict):
            return all(key is not None and plain(key) for key in node.keys) and \
                all(plain(value) for value in node.values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return isinstance(node.operand, ast.Constant)
        return _is_dict_call(node) and len(node.args) <= 1 and all(map(plain, node.args)) and \
            all(k.arg is not None and plain(k.value) for k in node.keywords)

    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or \
                not isinstance(node.targets[0], ast.Name):
            return f'line {node.lineno} is not a `name = value` assignment'
        name = node.targets[0].id
        if name.startswith('_') or name == 'dict':
            return f'line {node.lineno} assigns {name!r}'
        if not plain(node.value):
            return f'line {node.lineno} ({name}) computes its value (only literals and dict())'
        if name == 'custom_imports':
            imports = _literal_keywords(node.value) if _is_dict_call(node.value) else \
                _literal_or_none(node.value)
            modules = imports.get('imports', []) if isinstance(imports, dict) else None
            modules = [modules] if isinstance(modules, str) else modules
            if not isinstance(modules, (list, tuple)) or not all(
                    isinstance(m, str) and m.split('.')[0] in CONFIG_IMPORTS_ALLOWED
                    for m in modules):
                return f'custom_imports names modules outside {list(CONFIG_IMPORTS_ALLOWED)}'
    return None


def _parse_cfg_text(cfg_text) -> Optional[ast.Module]:
    """The syntax tree of a config's text (only parsed), or None for no text or bad syntax."""
    if not isinstance(cfg_text, str) or not cfg_text:
        return None
    try:
        return ast.parse(cfg_text)
    except (SyntaxError, ValueError):
        return None


def _literal_or_none(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _is_dict_call(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
        node.func.id == 'dict'


def file_sha256(path: str) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()
