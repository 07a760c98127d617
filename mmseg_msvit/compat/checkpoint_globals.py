"""Checkpoints under ``torch.load(weights_only=True)`` (the default from PyTorch 2.6).

Checkpoints written by mmengine's Runner contain a few non-tensor objects: ``HistoryBuffer`` in
the message hub (which pickles its statistics methods through ``getattr``), numpy arrays, scalars
and dtypes (the message hub's histories, the saved random state). :func:`checkpoint_safe_globals`
allow-lists exactly what such checkpoints hold, each through a checked stand-in registered under
the real name, so that a crafted file can neither run code nor reach memory:

* ``numpy.dtype``: only the plain numeric dtypes (bool, signed/unsigned ints, floats), always a
  fresh copy (a state applied to it touches no shared dtype);
* ``numpy.ndarray`` (only as the argument of ``_reconstruct``; calling it is refused) and
  ``_reconstruct``: arrays whose restored dtype is still plain numeric (no fields, no objects:
  an object field read from bytes would be a pointer) and whose data are bytes;
* ``scalar``: a plain numeric dtype and exactly its size in bytes;
* ``HistoryBuffer``: restored on the instance only (mmengine's own ``__setstate__`` updates the
  class-level table of statistics methods for the whole process); the only statistics accepted
  are mmengine's four built-in ones, reached by a restricted ``getattr``.

Arbitrary globals stay refused: ``weights_only`` is never switched off, because a checkpoint is
not trusted code.
"""
import pickle

import numpy as np
import torch

#: The statistics methods that ``HistoryBuffer.__getstate__`` pickles, by name.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')
#: The dtypes a checkpoint's arrays and scalars may have.
_NUMERIC_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                   'uint64', 'float16', 'float32', 'float64')
_HISTORY_BUFFER_FIELDS = {'max_length', '_log_history', '_count_history'}

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar


def _refuse(what: str):
    raise pickle.UnpicklingError(f'checkpoint asks for {what}; not allowed under '
                                 'weights_only=True')


def _check_dtype(dtype) -> np.dtype:
    """``dtype`` if it is a plain numeric dtype (no fields, sub-arrays, objects or metadata)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.fields is not None or \
            dtype.subdtype is not None or dtype.metadata or dtype.kind not in 'biuf' or \
            dtype != np.dtype(dtype.name):
        _refuse(f'an array or scalar of dtype {dtype!r}')
    return dtype


def _history_buffer_getattr(obj, name):
    """The only ``getattr`` a checkpoint may call: a built-in HistoryBuffer statistic.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle
    (protocol 2) writes as ``getattr(HistoryBuffer, 'min')``. Allow-listing the
    real ``getattr`` would let a pickle reach any attribute of any allowed
    object (and from there ``os.system``), so this restricted version is
    registered under the name ``builtins.getattr`` instead.
    """
    from mmengine.logging import HistoryBuffer
    if obj in (HistoryBuffer, _CheckedHistoryBuffer) and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only '
        f'HistoryBuffer.{{{", ".join(_HISTORY_BUFFER_STATISTICS)}}} are '
        'allowed under weights_only=True')


def _numeric_dtype(obj, align=False, copy=True):
    """``numpy.dtype`` for the plain numeric dtypes only, always a new copy."""
    if not isinstance(obj, str) or obj not in {np.dtype(n).str.lstrip('<>|=') for n in
                                               _NUMERIC_DTYPES} | set(_NUMERIC_DTYPES):
        _refuse(f'numpy.dtype({obj!r})')
    return np.dtype(obj, bool(align), True)


class _NdarrayName:
    """What the name ``numpy.ndarray`` means in a checkpoint: only the type argument of
    ``_reconstruct`` (calling it, which would give an uninitialised array of any dtype, is
    refused)."""

    def __new__(cls, *args, **kwargs):
        _refuse('numpy.ndarray(...)')


class _CheckedArray(np.ndarray):
    """An array being restored from a checkpoint: its state is checked before numpy reads it.
    It pickles as a plain ndarray again. Its name is allow-listed (so that BUILD may restore it),
    so calling it from a pickle must be refused: numpy's ``_reconstruct`` and ``__setstate__``
    do not go through ``__new__``."""

    def __new__(cls, *args, **kwargs):
        _refuse('an array created from its constructor')

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5) or \
                not isinstance(state[-1], (bytes, bytearray)):
            _refuse('an array whose state is not (shape, numeric dtype, bytes)')
        _check_dtype(state[-3])
        super().__setstate__(state)

    def __reduce__(self):
        return self.view(np.ndarray).__reduce__()


def _checked_reconstruct(subtype, shape, dtype_code):
    """numpy's ``_reconstruct`` as numpy pickles call it (an empty 1-D byte array that
    ``__setstate__`` then fills), and nothing else: any other shape or dtype would be
    uninitialised memory."""
    if subtype is not _NdarrayName or tuple(shape) != (0, ) or dtype_code != b'b':
        _refuse(f'_reconstruct({getattr(subtype, "__name__", subtype)!r}, {shape!r}, '
                f'{dtype_code!r})')
    return _reconstruct(_CheckedArray, shape, dtype_code)


def _checked_scalar(dtype, data=None):
    _check_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        _refuse(f'a {dtype} scalar from {type(data).__name__} data')
    return scalar(dtype, data)


def _history_buffer_class():
    from mmengine.logging import HistoryBuffer
    return HistoryBuffer


class _CheckedHistoryBuffer(_history_buffer_class()):
    """A HistoryBuffer restored from a checkpoint without touching class state: only
    mmengine's four statistics, only its three fields; it becomes a plain HistoryBuffer."""

    def __setstate__(self, state):
        from mmengine.logging import HistoryBuffer
        if not isinstance(state, dict):
            _refuse('a HistoryBuffer state that is not a dict')
        state = dict(state)
        methods = state.pop('statistics_methods', {})
        builtin = {name: getattr(HistoryBuffer, name) for name in _HISTORY_BUFFER_STATISTICS}
        if not isinstance(methods, dict) or any(builtin.get(k) is not v
                                                 for k, v in methods.items()):
            _refuse(f'HistoryBuffer statistics {sorted(methods)!r} other than mmengine\'s '
                    f'{list(_HISTORY_BUFFER_STATISTICS)}')
        unknown = set(state) - _HISTORY_BUFFER_FIELDS
        if unknown:
            _refuse(f'HistoryBuffer fields {sorted(unknown)}')
        self._set_default_statistics()  # the four built-ins, as any HistoryBuffer does
        self.__dict__.update(state)
        self.__class__ = HistoryBuffer


def checkpoint_safe_globals() -> list:
    """The non-tensor globals of mmengine Runner checkpoints, each as a checked stand-in
    registered under the real name (module docstring)."""
    numeric_dtype_types = [type(np.dtype(name)) for name in _NUMERIC_DTYPES]
    names = []
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # numpy 1.x / 2.x files
        names += [(_checked_reconstruct, f'{module}._reconstruct'),
                  (_checked_scalar, f'{module}.scalar')]
    return [
        (_CheckedHistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        _CheckedArray, (_NdarrayName, 'numpy.ndarray'), (_numeric_dtype, 'numpy.dtype'),
        *names, *numeric_dtype_types, (_history_buffer_getattr, 'builtins.getattr')
    ]


def install_checkpoint_safe_globals() -> None:
    torch.serialization.add_safe_globals(checkpoint_safe_globals())
