"""Checkpoints under ``torch.load(weights_only=True)`` (the default from PyTorch 2.6).

Checkpoints written by mmengine's Runner contain a few non-tensor objects: ``HistoryBuffer`` in
the message hub (which pickles its statistics methods through ``getattr``), numpy arrays, scalars
and dtypes (the message hub's histories, the saved random state). :func:`checkpoint_safe_globals`
allow-lists exactly what such checkpoints hold, each through a checked stand-in registered under
the real name, so that a crafted file can neither run code nor reach memory:

* ``numpy.dtype``: only the plain numeric dtypes (bool, signed/unsigned ints, floats). A pickle
  gets a :class:`_DtypeName` for it, never a real dtype: numpy's own ``dtype.__setstate__``
  would let a later BUILD of the same (memoised) dtype turn it into a structured or object
  dtype after an array using it was checked. The name accepts only numpy's canonical state of
  a plain dtype (its byte order), and arrays and scalars are made with a new dtype built from
  it, so no state from the file ever reaches a numpy dtype;
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


class _DtypeName:
    """What ``numpy.dtype(name, align, copy)`` gives in a checkpoint: the NAME of a plain numeric
    dtype and its byte order, never a numpy dtype object.

    numpy pickles a dtype as that call followed by BUILD with the dtype's state, and a crafted
    pickle can BUILD the same memoised object again later; on a real dtype that runs numpy's
    ``__setstate__``, which rewrites fields and flags of a dtype an array already uses. Here
    BUILD accepts only the canonical state numpy writes for a plain dtype (version 3, a byte
    order, no names, fields, sizes or flags); :meth:`dtype` makes a new numpy dtype from the
    name each time it is asked.
    """
    __slots__ = ('name', 'byteorder')

    def __new__(cls, *args, **kwargs):  # only _numeric_dtype makes one
        _refuse('a dtype name created from its constructor')

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 8 or state[0] != 3 or \
                state[1] not in ('<', '>', '|', '=') or state[2:] != (None, None, None, -1, -1, 0):
            _refuse(f'a dtype state other than numpy\'s plain {self.name} one (names, fields, sizes '
                    'or flags)')
        object.__setattr__(self, 'byteorder', state[1])

    def __setattr__(self, name, value):
        _refuse(f'setting {name!r} on a dtype')

    def dtype(self) -> np.dtype:
        """A new numpy dtype for this name and byte order."""
        dtype = np.dtype(self.name)
        return dtype if self.byteorder in ('|', '=') else dtype.newbyteorder(self.byteorder)

    def __reduce__(self):  # saved again as the numpy dtype it stands for
        return self.dtype().__reduce__()


def _numeric_dtype(obj, align=False, copy=True):
    """``numpy.dtype`` in a checkpoint: a :class:`_DtypeName` for the plain numeric dtypes only."""
    if not isinstance(obj, str) or obj not in {np.dtype(n).str.lstrip('<>|=') for n in
                                               _NUMERIC_DTYPES} | set(_NUMERIC_DTYPES):
        _refuse(f'numpy.dtype({obj!r})')
    name = object.__new__(_DtypeName)
    object.__setattr__(name, 'name', np.dtype(obj).name)
    object.__setattr__(name, 'byteorder', '=')
    return name


def _dtype_of(dtype) -> np.dtype:
    """The new numpy dtype a checkpoint's dtype name stands for (anything else refused)."""
    if not isinstance(dtype, _DtypeName):
        _refuse(f'an array or scalar of dtype {dtype!r}')
    return _check_dtype(dtype.dtype())


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
        state = state[:-3] + (_dtype_of(state[-3]), ) + state[-2:]
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
    dtype = _dtype_of(dtype)
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
    names = []
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):  # numpy 1.x / 2.x files
        names += [(_checked_reconstruct, f'{module}._reconstruct'),
                  (_checked_scalar, f'{module}.scalar')]
    return [
        (_CheckedHistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        _CheckedArray, (_NdarrayName, 'numpy.ndarray'), (_numeric_dtype, 'numpy.dtype'),
        _DtypeName, *names, (_history_buffer_getattr, 'builtins.getattr')
    ]


def install_checkpoint_safe_globals() -> None:
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


def checked_after_loading(obj):
    """What ``torch.load`` gave, checked once more as a whole: every numpy array and scalar in it
    (dicts, lists, tuples, HistoryBuffers) has a plain numeric dtype, and a dtype stored on its
    own becomes the numpy dtype it names. Refuses (``pickle.UnpicklingError``) anything else."""
    from mmengine.logging import HistoryBuffer
    if isinstance(obj, _DtypeName):
        return obj.dtype()
    if isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)
        return obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = checked_after_loading(value)
        return obj
    if isinstance(obj, list):
        obj[:] = [checked_after_loading(value) for value in obj]
        return obj
    if type(obj) is tuple:  # noqa: E721  (torch.Size and named tuples stay as they are)
        return tuple(checked_after_loading(value) for value in obj)
    if isinstance(obj, HistoryBuffer):
        checked_after_loading(obj.__dict__)
    return obj
