"""Stand-in ``mmcv.ops`` for mmcv without compiled ops (mmcv-lite).

mmseg imports a handful of ops from ``mmcv.ops`` at import time (``point_sample``,
``sigmoid_focal_loss``, ...). mmcv-lite ships the Python files but not the compiled extension, so
``import mmcv.ops`` fails. When, and only when, that happens :func:`install_mmcv_ops_standin`
registers a stand-in ``mmcv.ops`` module holding

* pure-PyTorch ``point_sample`` and ``sigmoid_focal_loss`` that compute exactly what mmcv's ops
  compute, and
* placeholders for the other ops mmseg / mmengine import by name; they import fine and raise
  :class:`MissingMmcvOpError` (naming the op and how to get a full mmcv) when they are *used*.

With a full mmcv (``mmcv._ext`` importable) nothing is changed.
"""
import importlib
import sys
import types
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

# Ops that mmseg / mmengine import by name from ``mmcv.ops`` and for which we
# provide no pure-PyTorch version.
PLACEHOLDER_OPS = ('CrissCrossAttention', 'PSAMask', 'DeformConv2d',
                   'ModulatedDeformConv2d', 'SyncBatchNorm')


class MissingMmcvOpError(RuntimeError):
    """Raised when an mmcv op that needs mmcv's compiled extension is used."""


def _missing_op_message(name: str) -> str:
    return (f'mmcv.ops.{name} needs mmcv\'s compiled extension, but the '
            'installed mmcv has none (mmcv-lite). mmseg_msvit provides '
            'pure-PyTorch versions of point_sample and sigmoid_focal_loss '
            f'only. To use {name}, install a full mmcv built for your '
            'PyTorch (e.g. `pip uninstall mmcv-lite && mim install '
            '"mmcv>=2.0.0rc4,<2.2.0"`; it compiles from source when no '
            'wheel matches).')


def _make_placeholder(name: str) -> type:

    class _Placeholder:

        def __init__(self, *args, **kwargs):
            raise MissingMmcvOpError(_missing_op_message(name))

    _Placeholder.__name__ = name
    _Placeholder.__qualname__ = name
    _Placeholder.__doc__ = f'Placeholder: {_missing_op_message(name)}'
    return _Placeholder


def point_sample(input: torch.Tensor,
                 points: torch.Tensor,
                 align_corners: bool = False,
                 **kwargs) -> torch.Tensor:
    """Sample ``input`` at points given in ``[0, 1] x [0, 1]`` coordinates.

    Same contract as ``mmcv.ops.point_sample``.

    Args:
        input (Tensor): feature map (N, C, H, W).
        points (Tensor): (N, P, 2) or (N, Hg, Wg, 2), x first, in [0, 1].
        align_corners (bool): passed to :func:`F.grid_sample`.
        **kwargs: passed to :func:`F.grid_sample` (e.g. ``mode``).

    Returns:
        Tensor: (N, C, P) or (N, C, Hg, Wg).
    """
    squeeze_last = points.dim() == 3
    if squeeze_last:
        points = points.unsqueeze(2)
    grid = points * 2.0 - 1.0  # [0, 1] -> [-1, 1], grid_sample's convention
    output = F.grid_sample(
        input, grid, align_corners=align_corners, **kwargs)
    if squeeze_last:
        output = output.squeeze(3)
    return output


def sigmoid_focal_loss(input: torch.Tensor,
                       target: torch.Tensor,
                       gamma: float = 2.0,
                       alpha: float = 0.25,
                       weight: Optional[torch.Tensor] = None,
                       reduction: str = 'mean') -> torch.Tensor:
    """Sigmoid focal loss with the definition of mmcv's compiled op.

    For logits ``x`` (N, C) and class indices ``t`` (N,) (``t == C`` means no
    positive class), with ``p = sigmoid(x)``::

        loss[n, c] = -alpha     * (1 - p)^gamma * log(max(p, FLT_MIN))      if c == t[n]
                   = -(1-alpha) * p^gamma       * log(max(1 - p, FLT_MIN))  otherwise
        loss[n, c] *= weight[t[n]]  (when a per-class weight is given)

    reduction ``'mean'`` divides the sum by N (not N*C), as mmcv does. The
    gradient is autograd's derivative of this expression, which is the
    closed form mmcv's backward kernel evaluates.
    """
    if reduction not in ('none', 'mean', 'sum'):
        raise ValueError(f'sigmoid_focal_loss: reduction must be one of '
                         f"'none', 'mean', 'sum', got {reduction!r}")
    if input.dim() != 2 or target.dim() != 1 or input.size(0) != target.size(
            0):
        raise ValueError('sigmoid_focal_loss: expected input (N, C) and '
                         f'target (N,), got {tuple(input.shape)} and '
                         f'{tuple(target.shape)}')
    if target.dtype != torch.long:
        raise TypeError('sigmoid_focal_loss: target must be int64 class '
                        f'indices, got {target.dtype}')
    num_classes = input.size(1)
    prob = input.sigmoid()
    tiny = torch.finfo(prob.dtype).tiny
    is_target = target[:, None] == torch.arange(
        num_classes, device=input.device)[None, :]
    term_pos = (1 - prob).pow(gamma) * prob.clamp(min=tiny).log()
    term_neg = prob.pow(gamma) * (1 - prob).clamp(min=tiny).log()
    loss = torch.where(is_target, -alpha * term_pos,
                       -(1 - alpha) * term_neg)
    if weight is not None:
        if weight.dim() != 1 or weight.numel() != num_classes:
            raise ValueError('sigmoid_focal_loss: weight must be (C,) = '
                             f'({num_classes},), got {tuple(weight.shape)}')
        if bool(((target < 0) | (target >= num_classes)).any()):
            raise ValueError('sigmoid_focal_loss: a per-class weight needs '
                             f'every target in [0, {num_classes}), got '
                             f'values outside it')
        loss = loss * weight[target][:, None]
    if reduction == 'mean':
        return loss.sum() / input.size(0)
    if reduction == 'sum':
        return loss.sum()
    return loss


def mmcv_has_compiled_ops() -> bool:
    """True when mmcv's compiled extension ``mmcv._ext`` can be imported."""
    try:
        importlib.import_module('mmcv._ext')
    except ImportError:
        return False
    return True


def install_mmcv_ops_standin() -> bool:
    """Register the stand-in ``mmcv.ops`` if mmcv has no compiled ops.

    Returns True when the stand-in is (now) in place.
    """
    existing = sys.modules.get('mmcv.ops')
    if existing is not None:
        return getattr(existing, '__mmseg_msvit_standin__', False)
    if mmcv_has_compiled_ops():
        return False
    import mmcv  # noqa: F401  (the parent package must exist first)
    module = build_standin_module()
    sys.modules['mmcv.ops'] = module
    sys.modules['mmcv'].ops = module
    return True


def build_standin_module() -> types.ModuleType:
    """The stand-in ``mmcv.ops`` module (not registered; see :func:`install_mmcv_ops_standin`
    and the start-up finder in ``mmseg_msvit_startup``)."""
    module = types.ModuleType(
        'mmcv.ops', 'Stand-in for mmcv.ops installed by mmseg_msvit.compat: '
        'mmcv has no compiled ops here.')
    module.__mmseg_msvit_standin__ = True
    module.point_sample = point_sample
    module.sigmoid_focal_loss = sigmoid_focal_loss
    for name in PLACEHOLDER_OPS:
        setattr(module, name, _make_placeholder(name))
    module.__all__ = ['point_sample', 'sigmoid_focal_loss',
                      *PLACEHOLDER_OPS]
    # mmcv-lite warns on every import that it lacks this op; with the stand-in that is known
    # (and the placeholder names the op if it is ever used), so keep tool output clean
    warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')
    return module


