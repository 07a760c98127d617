"""Gate files (:func:`extract_gate`, :func:`save_gate`, :func:`load_gate`): move a trained gate
between models.

The gate reads pixels, so a gate trained with one ViT (any task, any width) loads into another,
as long as the patch sizes and the input normalisation match; both are stored with the gate and
checked on load (never a silent load). Gate file layout (plain tensors and Python values)::

    {'state_dict': {'mlp.0.weight': ..., ...},          # MixedScaleGate keys
     'meta': {'coarse_patch_size': 32, 'fine_patch_size': 16, 'in_channels': 3,
              'hidden_dims': [256, 256], 'mean': [...], 'std': [...], 'bgr_to_rgb': True,
              'source': 'path/of/the/source.pth'},
     'gbas_prior': {'mu_logit': ..., 'tau_logit': ...}}  # optional
"""
import math
from typing import Optional, Sequence

import torch

from ...fileio import atomic_write
from .reading import (describe_checkpoint, normalisation_from_cfg_text, read_checkpoint,
                      state_dict_of)

#: key prefixes of the gate and of the GBaS prior in a segmentor/classifier checkpoint
GATE_PREFIX = 'backbone.gate.'
PRIOR_PREFIX = 'gate_loss.'


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
    """Write atomically (:func:`mmseg_msvit.fileio.atomic_write`)."""
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


def _read_gate_file(path: str, backbone, normalisation: Optional[dict]) -> dict:
    """A gate file's contents, refused when it is another kind of file or does not fit
    ``backbone`` (patch sizes, channels; the input normalisation when given)."""
    gate = read_checkpoint(path, 'MSViT: gate checkpoint')
    kind = describe_checkpoint(gate)
    if not kind.startswith('a gate file'):
        raise ValueError(f'MSViT: gate checkpoint {path!r} is {kind}, not a gate file; '
                         f'extract its gate first: python tools/transfer_gate.py {path} '
                         "gate.pth, then set gate_init=dict(checkpoint='gate.pth')")
    check_gate_compatible(gate['meta'], backbone.coarse_patch_size, backbone.fine_patch_size,
                          backbone.in_channels, normalisation, path)
    return gate


def load_gate(backbone, path: str, normalisation: Optional[dict] = None) -> dict:
    """Load a gate file written by ``tools/transfer_gate.py`` into ``backbone.gate``.

    Patch sizes and channels are checked against the backbone, the input normalisation against
    ``normalisation`` when given (the segmentor/classifier passes its data preprocessor's).

    Returns:
        dict: the gate file's meta.
    """
    gate = _read_gate_file(path, backbone, normalisation)
    ours = bool(getattr(backbone.gate, 'content_prior', False))
    if bool(gate['meta'].get('content_prior', False)) != ours:
        raise ValueError(f"MSViT: gate in {path!r} has content_prior="
                         f"{bool(gate['meta'].get('content_prior', False))}, this model's gate "
                         f'content_prior={ours}; set model.backbone.gate.content_prior to match')
    try:
        backbone.gate.load_state_dict(gate['state_dict'])
    except RuntimeError as err:
        ours = list(getattr(backbone.gate, 'hidden_dims', ()))  # parameter-free gates have none
        raise ValueError(f'MSViT: gate in {path!r} (hidden_dims '
                         f"{gate['meta'].get('hidden_dims')}) does not match this model's "
                         f'gate (hidden_dims {ours}): {err}') from err
    return gate['meta']


def gate_from_file(path: str, backbone, normalisation: Optional[dict] = None):
    """The gate of a gate file as a module of its own, for ``backbone`` (its patch sizes and
    channels, and ``normalisation`` when given, checked as :func:`load_gate` does): a
    transferred gate substituted at evaluation (``ScalePolicy.with_budget(b, gate=...)``) without
    changing the model's own gate."""
    from ..gates import MixedScaleGate
    gate = _read_gate_file(path, backbone, normalisation)
    meta = gate['meta']
    module = MixedScaleGate(coarse_patch_size=meta['coarse_patch_size'],
                            in_channels=meta['in_channels'],
                            hidden_dims=tuple(meta['hidden_dims']),
                            content_prior=bool(meta.get('content_prior', False)),
                            fine_patch_size=meta['fine_patch_size'])
    module.load_state_dict(gate['state_dict'])
    return module


def read_gate_meta(path: str) -> dict:
    """The meta of a gate file (for checks made after loading)."""
    return read_checkpoint(path, 'MSViT: gate checkpoint')['meta']


def input_normalisation(data_preprocessor) -> Optional[dict]:
    """mean / std / bgr_to_rgb of an mmseg or mmpretrain data preprocessor (None if it does not
    normalise)."""
    if not getattr(data_preprocessor, '_enable_normalize', False):
        return None
    return dict(mean=data_preprocessor.mean.flatten().tolist(),
                std=data_preprocessor.std.flatten().tolist(),
                bgr_to_rgb=bool(getattr(data_preprocessor, 'channel_conversion',
                                        getattr(data_preprocessor, 'to_rgb', False))))


def check_gate_normalisation(backbone, data_preprocessor) -> None:
    """A transferred gate (``backbone.gate_init``) must have seen inputs normalised as this
    model's data preprocessor normalises them (clear error naming the differences)."""
    if backbone.gate_init is None:
        return
    path = backbone.gate_init['checkpoint']
    check_gate_compatible(read_gate_meta(path), backbone.coarse_patch_size,
                          backbone.fine_patch_size, backbone.in_channels,
                          input_normalisation(data_preprocessor), path)
