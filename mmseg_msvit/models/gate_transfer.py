"""Move a trained gate between models: extract it from a checkpoint, load it into an MSViT.

The gate reads pixels, so a gate trained with one ViT (any task, any width) loads into another,
as long as the patch sizes and the input normalisation match; both are stored with the gate and
checked on load (never a silent load).

Gate checkpoint (plain tensors and Python values, loads with ``weights_only=True``)::

    {'state_dict': {'mlp.0.weight': ..., ...},          # MixedScaleGate keys
     'meta': {'coarse_patch_size': 32, 'fine_patch_size': 16, 'in_channels': 3,
              'hidden_dims': [256, 256], 'mean': [...], 'std': [...], 'bgr_to_rgb': True,
              'source': 'path/of/the/source.pth'},
     'gbas_prior': {'mu_logit': ..., 'tau_logit': ...}}  # optional
"""
import os
import os.path as osp
import tempfile
from typing import Optional, Sequence

import torch

GATE_PREFIX = 'backbone.gate.'
PRIOR_PREFIX = 'gate_loss.'


def _normalisation_from_cfg_text(cfg_text: str) -> Optional[dict]:
    """mean / std / bgr_to_rgb of the data preprocessor of a config saved in a checkpoint."""
    from mmengine.config import Config
    try:
        cfg = Config.fromstring(cfg_text, '.py')
    except Exception:  # noqa: BLE001  (an unparsable config just leaves it unknown)
        return None
    preprocessor = cfg.get('model', {}).get('data_preprocessor') or cfg.get('data_preprocessor')
    if not preprocessor or preprocessor.get('mean') is None:
        return None
    return dict(mean=[float(v) for v in preprocessor['mean']],
                std=[float(v) for v in preprocessor['std']],
                bgr_to_rgb=bool(preprocessor.get('bgr_to_rgb', preprocessor.get('to_rgb', False))))


def extract_gate(checkpoint: str,
                 include_prior: bool = False,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 bgr_to_rgb: Optional[bool] = None) -> dict:
    """Build a gate checkpoint from a segmentation or classification checkpoint.

    The normalisation is read from the config stored in the checkpoint's meta; ``mean``/``std``/
    ``bgr_to_rgb`` override it (required when the checkpoint holds no config).
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'transfer_gate: checkpoint {checkpoint!r} does not exist')
    source = torch.load(checkpoint, map_location='cpu', weights_only=True)
    state = source.get('state_dict', source)
    gate_state = {k[len(GATE_PREFIX):]: v for k, v in state.items() if k.startswith(GATE_PREFIX)}
    if not gate_state:
        raise KeyError(f'transfer_gate: {checkpoint!r} has no {GATE_PREFIX}* keys; is it an '
                       'MSViT checkpoint with a gate (not a force_scale baseline)?')
    weights = [gate_state[k] for k in sorted(gate_state) if k.endswith('weight')]
    first = gate_state['mlp.0.weight']
    proj = state.get('backbone.patch_embed.proj.weight')
    if proj is None:
        raise KeyError(f'transfer_gate: {checkpoint!r} has no backbone.patch_embed.proj.weight '
                       '(needed for the fine patch size)')
    in_channels, fine_patch_size = proj.shape[1], proj.shape[-1]
    coarse_patch_size = int(round((first.shape[1] / in_channels)**0.5))
    hidden = [int(w.shape[0]) for w in weights[:-1]]
    normalisation = _normalisation_from_cfg_text(source.get('meta', {}).get('cfg', '')) or {}
    for key, value in (('mean', mean), ('std', std), ('bgr_to_rgb', bgr_to_rgb)):
        if value is not None:
            normalisation[key] = list(value) if key != 'bgr_to_rgb' else bool(value)
    missing = {'mean', 'std', 'bgr_to_rgb'} - set(normalisation)
    if missing:
        raise ValueError(f'transfer_gate: the input normalisation of {checkpoint!r} is unknown '
                         f'(missing {sorted(missing)}); pass --mean/--std/--bgr-to-rgb')
    gate = dict(
        state_dict=gate_state,
        meta=dict(coarse_patch_size=coarse_patch_size, fine_patch_size=int(fine_patch_size),
                  in_channels=int(in_channels), hidden_dims=hidden, source=checkpoint,
                  **normalisation))
    if include_prior:
        prior = {k[len(PRIOR_PREFIX):]: v for k, v in state.items()
                 if k.startswith(PRIOR_PREFIX)}
        if not prior:
            raise KeyError(f'transfer_gate: {checkpoint!r} holds no GBaS prior ({PRIOR_PREFIX}*)')
        gate['gbas_prior'] = prior
    return gate


def save_gate(gate: dict, path: str) -> None:
    """Write atomically (temporary file in the same folder, then rename)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(gate, f)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


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
