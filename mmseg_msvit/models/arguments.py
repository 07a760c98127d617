"""Argument checks shared by the models: each error names the argument, the value and what is
expected."""
import math
import numbers
from typing import Sequence, Tuple


def is_int(value) -> bool:
    """An integer that is not a bool (``True`` is not a size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number (NaN and inf included) that is not a bool; strings are not numbers."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(owner: str, name: str, value, expected: str = 'a positive int') -> int:
    """An int >= 1 (not a bool), as an int; ``expected`` words the error's requirement."""
    if not is_int(value) or value < 1:
        raise ValueError(f'{owner}: {name} must be {expected}, got {value!r}')
    return int(value)


def check_bool(owner: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f'{owner}: {name} must be True or False, got {value!r}')
    return value


def check_positive_ints(owner: str, name: str, value) -> tuple:
    """A (possibly empty) sequence of positive ints, as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or \
            not all(is_int(item) and item >= 1 for item in value):
        raise ValueError(f'{owner}: {name} must be a sequence of positive ints, got {value!r}')
    return tuple(int(item) for item in value)


def check_rate(owner: str, name: str, value) -> float:
    """A probability-like rate in [0, 1)."""
    if not is_real(value) or not 0 <= value < 1:  # NaN fails the comparison
        raise ValueError(f'{owner}: {name} must be a number in [0, 1), got {value!r}')
    return float(value)


def check_positive_real(owner: str, name: str, value) -> float:
    if not is_real(value) or not 0 < value < math.inf:
        raise ValueError(f'{owner}: {name} must be a finite number > 0, got {value!r}')
    return float(value)


def check_gate_threshold(value) -> float:
    """A real number in [0, 1] (not bool/str/NaN), as a float."""
    if not is_real(value) or not 0 <= value <= 1:  # NaN fails the comparison
        raise ValueError('MSViT: gate_threshold must be a number in [0, 1] (the gate '
                         f'probability above which a region is fine), got {value!r}')
    return float(value)


def check_fine_budget(value):
    """None, or a real number in (0, 1] (the fine fraction per image in budget mode)."""
    if value is None:
        return None
    if not is_real(value) or not 0 < value <= 1:  # NaN fails the comparison
        raise ValueError('MSViT: fine_budget must be None (threshold mode) or a number in (0, 1] '
                         f'(the share of regions kept fine in every image), got {value!r}')
    return float(value)


def check_train_budget_range(value, fine_budget, budget_required: bool = True):
    """None, or ``(low, high)`` with 0 < low <= high <= 1, as a pair of floats; in budget mode
    its evaluation budget ``fine_budget`` must be given too (``budget_required``: a config's
    options may keep a range while threshold mode leaves it unused)."""
    if value is None:
        return None
    low_high = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(low_high) != 2 or not all(is_real(v) and 0 < v <= 1 for v in low_high) or \
            low_high[0] > low_high[1] or (budget_required and fine_budget is None):
        raise ValueError('MSViT: train_budget_range must be (low, high) with 0 < low <= high <= '
                         '1, and needs a fine_budget (the evaluation budget), got '
                         f'train_budget_range={value!r}, fine_budget={fine_budget!r}')
    return float(low_high[0]), float(low_high[1])


def check_size_pair(owner: str, name: str, value) -> Tuple[int, int]:
    """A positive int, a 1-tuple (square, as mmseg's ``to_2tuple`` reads it) or a pair of
    positive ints, as a pair."""
    if is_int(value):
        sides = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 2) \
            and all(is_int(side) for side in value):
        sides = (value[0], value[-1])
    else:
        sides = None
    if sides is None or min(sides) < 1:
        raise ValueError(f'{owner}: {name} must be a positive int or a pair of positive ints, '
                         f'got {value!r}')
    return int(sides[0]), int(sides[1])


def check_out_indices(owner: str, value, depth: int) -> list:
    """Block indices (negative counted from the end) resolved to 0..depth-1."""
    if is_int(value):
        value = [value]
    if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
            and all(is_int(i) for i in value)):
        raise ValueError(f'{owner}: out_indices must be an int or a non-empty sequence of ints '
                         f'(block indices, -1 = last), got {value!r}')
    resolved = []
    for index in value:
        block = index + depth if index < 0 else index
        if not 0 <= block < depth:
            raise ValueError(f'{owner}: out_indices contains {index}, outside a depth of {depth}')
        resolved.append(int(block))
    return resolved


#: MSViT's architecture presets (timm's ViT-Ti/S/B/L)
ARCH_ZOO = {
    'tiny': dict(embed_dims=192, depth=12, num_heads=3),
    'small': dict(embed_dims=384, depth=12, num_heads=6),
    'base': dict(embed_dims=768, depth=12, num_heads=12),
    'large': dict(embed_dims=1024, depth=24, num_heads=16),
}


def resolve_arch(arch, **overrides) -> dict:
    """embed_dims / depth / num_heads from a preset name or dict, with overrides, checked."""
    if isinstance(arch, str):
        if arch not in ARCH_ZOO:
            raise ValueError(f'MSViT: unknown arch={arch!r}; expected one of {sorted(ARCH_ZOO)} '
                             'or a dict with embed_dims, depth, num_heads')
        settings = dict(ARCH_ZOO[arch])
    elif isinstance(arch, dict):
        missing = {'embed_dims', 'depth', 'num_heads'} - set(arch)
        if missing:
            raise ValueError(f'MSViT: arch dict lacks {sorted(missing)}, got {arch}')
        settings = dict(arch)
    else:
        raise TypeError(f'MSViT: arch must be a str or dict, got {type(arch).__name__}')
    settings.update({k: v for k, v in overrides.items() if v is not None})
    for name in ('embed_dims', 'depth', 'num_heads'):
        check_positive_int('MSViT', name, settings[name])
    if settings['embed_dims'] % settings['num_heads'] != 0:
        raise ValueError(f"MSViT: embed_dims={settings['embed_dims']} is not divisible by "
                         f"num_heads={settings['num_heads']}")
    return settings


def check_msvit_args(*, arch, embed_dims, depth, num_heads, img_size, fine_patch_size,
                     coarse_patch_size, in_channels, mlp_ratio, drop_rate, attn_drop_rate,
                     drop_path_rate, out_indices, frozen_stages, gate_init, norm_eps,
                     patch_bias, token_packing, coarse_detail, coarse_scale_embed) -> dict:
    """MSViT's structural arguments, each checked (errors name the argument, the value and what
    is expected) and normalised; the scale-policy arguments are checked by ``ScalePolicy``."""
    owner = 'MSViT'
    out = resolve_arch(arch, embed_dims=embed_dims, depth=depth, num_heads=num_heads)
    depth = out['depth']
    out['fine_patch_size'] = fine = check_positive_int(owner, 'fine_patch_size',
                                                       fine_patch_size)
    out['coarse_patch_size'] = coarse = check_positive_int(owner, 'coarse_patch_size',
                                                           coarse_patch_size)
    if coarse % fine != 0 or coarse <= fine:
        raise ValueError('MSViT: coarse_patch_size must be a multiple (> 1x) of fine_patch_size, '
                         f'got coarse_patch_size={coarse}, fine_patch_size={fine}')
    out['in_channels'] = check_positive_int(owner, 'in_channels', in_channels)
    out['mlp_ratio'] = check_positive_real(owner, 'mlp_ratio', mlp_ratio)
    for name, value in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                        ('drop_path_rate', drop_path_rate)):
        out[name] = check_rate(owner, name, value)
    if not is_int(frozen_stages) or not -1 <= frozen_stages <= depth:
        raise ValueError(f'MSViT: frozen_stages must be an int in -1..{depth} (-1: nothing '
                         f'frozen, depth={depth}: every block), got {frozen_stages!r}')
    out['frozen_stages'] = int(frozen_stages)
    out['img_size'] = size = check_size_pair(owner, 'img_size', img_size)
    if size[0] % coarse or size[1] % coarse:
        raise ValueError(f'MSViT: img_size={size} must be a multiple of '
                         f'coarse_patch_size={coarse}')
    if gate_init is not None:
        if not isinstance(gate_init, dict) or 'checkpoint' not in gate_init or \
                set(gate_init) - {'checkpoint', 'freeze'}:
            raise ValueError("MSViT: gate_init needs a checkpoint: dict(checkpoint='gate.pth', "
                             f'freeze=False), got {gate_init}')
        check_bool(owner, 'gate_init.freeze', gate_init.get('freeze', False))
    out['gate_init'] = gate_init
    out['out_indices'] = check_out_indices(owner, out_indices, depth)
    out['norm_eps'] = check_positive_real(owner, 'norm_eps', norm_eps)
    for name, value in (('patch_bias', patch_bias), ('token_packing', token_packing),
                        ('coarse_detail', coarse_detail),
                        ('coarse_scale_embed', coarse_scale_embed)):
        out[name] = check_bool(owner, name, value)
    return out


#: mmseg ``VisionTransformer`` argument names that map one to one onto MSViT's
MMSEG_VIT_RENAMES = {'patch_size': 'fine_patch_size', 'num_layers': 'depth'}
#: mmseg ``VisionTransformer`` arguments MSViT accepts only at the value it implements
MMSEG_VIT_FIXED = {'output_cls_token': False, 'patch_norm': False, 'pre_norm': False,
                   'interpolate_mode': 'bicubic'}
#: mmseg ``VisionTransformer`` arguments accepted at either boolean value, without effect
#: (``norm_eval``: mmseg's ViT puts its LayerNorms in eval mode, where they compute the same)
MMSEG_VIT_NO_EFFECT = ('norm_eval', )
#: every mmseg ``VisionTransformer`` name :func:`translate_mmseg_vit_args` accepts
MMSEG_VIT_ACCEPTED = tuple(sorted(list(MMSEG_VIT_RENAMES) + ['norm_cfg', 'act_cfg',
                                                             'with_cls_token'] +
                                  list(MMSEG_VIT_FIXED) + list(MMSEG_VIT_NO_EFFECT)))


def translate_mmseg_vit_args(given: dict, explicit: dict) -> dict:
    """MSViT arguments from mmseg ``VisionTransformer`` names, so a config switches by changing
    ``type`` (README, "From an mmseg ViT config").

    ``patch_size`` -> ``fine_patch_size``, ``num_layers`` -> ``depth``, ``norm_cfg=dict(type='LN',
    eps=e)`` -> ``norm_eps=e`` (mmseg's LN default eps is 1e-5), ``act_cfg`` GELU only; the
    arguments of :data:`MMSEG_VIT_FIXED` only at the value MSViT implements. Anything else is
    refused with the list of accepted names.

    Args:
        given (dict): the extra keyword arguments MSViT received.
        explicit (dict): MSViT's own arguments that were set (to refuse giving both names).
    """
    out = {}
    for name, value in given.items():
        if name in MMSEG_VIT_RENAMES:
            ours = MMSEG_VIT_RENAMES[name]
            if explicit.get(ours) is not None:
                raise ValueError(f'MSViT: got both {name}={value!r} (mmseg name) and '
                                 f'{ours}={explicit[ours]!r}; give one')
            out[ours] = value
        elif name == 'norm_cfg':
            if not isinstance(value, dict) or value.get('type') not in ('LN', 'LayerNorm') or \
                    set(value) - {'type', 'eps', 'requires_grad'}:
                raise ValueError(f"MSViT: norm_cfg must be dict(type='LN', eps=...) (MSViT's "
                                 f'blocks use LayerNorm), got {value!r}')
            out['norm_eps'] = float(value.get('eps', 1e-5))  # mmcv's LN: nn.LayerNorm default
        elif name == 'act_cfg':
            if not isinstance(value, dict) or value.get('type') != 'GELU':
                raise ValueError(f"MSViT: act_cfg must be dict(type='GELU') (timm's ViT blocks), "
                                 f'got {value!r}')
        elif name == 'with_cls_token':
            out['with_cls_token'] = check_bool('MSViT', name, value)
        elif name in MMSEG_VIT_NO_EFFECT:
            check_bool('MSViT', name, value)
        elif name in MMSEG_VIT_FIXED:
            if value != MMSEG_VIT_FIXED[name]:
                raise ValueError(f'MSViT: {name}={value!r} is not supported; MSViT implements '
                                 f'{name}={MMSEG_VIT_FIXED[name]!r} (remove it from the config)')
        else:
            raise TypeError(f'MSViT: unexpected argument {name}={value!r}; besides its own '
                            f'arguments MSViT accepts these mmseg VisionTransformer names: '
                            f'{", ".join(MMSEG_VIT_ACCEPTED)}')
    return out
