"""Checkpoints under ``torch.load(weights_only=True)`` (the default from PyTorch 2.6).

Checkpoints written by mmengine's Runner contain a few non-tensor objects: ``HistoryBuffer`` in
the message hub (which pickles its statistics methods through ``getattr``), numpy arrays, scalars
and dtypes. :func:`install_checkpoint_safe_globals` allow-lists exactly those with
:func:`torch.serialization.add_safe_globals`, ``getattr`` only in a version restricted to
HistoryBuffer's statistics. Arbitrary globals stay refused: ``weights_only`` is never switched
off, because a checkpoint is not trusted code.
"""
import pickle

import torch

#: The statistics methods that ``HistoryBuffer.__getstate__`` pickles, by name.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj, name):
    """The only ``getattr`` a checkpoint may call: a built-in HistoryBuffer statistic.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle
    (protocol 2) writes as ``getattr(HistoryBuffer, 'min')``. Allow-listing the
    real ``getattr`` would let a pickle reach any attribute of any allowed
    object (and from there ``os.system``), so this restricted version is
    registered under the name ``builtins.getattr`` instead.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only '
        f'HistoryBuffer.{{{", ".join(_HISTORY_BUFFER_STATISTICS)}}} are '
        'allowed under weights_only=True')


def checkpoint_safe_globals() -> list:
    """The non-tensor globals found in mmengine Runner checkpoints.

    Exactly these are allow-listed for ``torch.load(weights_only=True)``:
    ``HistoryBuffer`` (message hub), numpy arrays / scalars / numeric dtypes
    (inside HistoryBuffer and the meta), and the restricted ``getattr`` above.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    numeric_dtypes = [
        type(np.dtype(name)) for name in
        ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
         'uint32', 'uint64', 'float16', 'float32', 'float64')
    ]
    return [
        HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar,
        *numeric_dtypes, (_history_buffer_getattr, 'builtins.getattr')
    ]


def install_checkpoint_safe_globals() -> None:
    torch.serialization.add_safe_globals(checkpoint_safe_globals())


