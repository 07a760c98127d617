"""Durable file writes: a file is either the old one or the complete new one, never a torso.

``atomic_write`` (defined in :mod:`mmseg_msvit.fileio`, so that the models can use it without
importing the engine) writes bytes to a temporary file beside the target, fsyncs it, gives it the
mode an ordinary ``open(path, 'w')`` would (0666 less the umask; ``mkstemp`` alone gives 0600),
renames it over the target and fsyncs the folder. ``AtomicLocalBackend`` is mmengine's local
file backend with that ``put``; it is registered under its own name, ``'atomic_local'``, and
used where a config asks for it (``SafeCheckpointHook`` does by default). mmengine's own
``'local'`` backend is left as it is.
"""
from contextlib import contextmanager
import glob
import os
import os.path as osp
import tempfile
from typing import List, Union

from mmengine.fileio import register_backend
from mmengine.fileio.backends import LocalBackend

from ..fileio import TMP_SUFFIX, _umask, atomic_write  # noqa: F401  (re-exported)


@contextmanager
def atomic_path(path: Union[str, os.PathLike]):
    """A temporary path beside ``path`` for a writer that wants a file name (an exporter, say);
    it replaces ``path`` when the block ends without an error, and is removed otherwise."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix='.' + osp.basename(path) + '.',
                                    suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp_path
        with open(tmp_path, 'rb') as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if osp.exists(tmp_path):
            os.remove(tmp_path)


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    """:func:`atomic_write` of a bytes object."""
    atomic_write(path, lambda f: f.write(data))


def remove_stale_temporaries(folder: str) -> List[str]:
    """Delete the temporaries an interrupted :func:`atomic_write` left in ``folder``; returns
    their paths."""
    stale = sorted(glob.glob(osp.join(glob.escape(folder), '.*' + TMP_SUFFIX)))
    for path in stale:
        os.remove(path)
    return stale


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put``/``put_text`` are atomic (see module doc).

    Select it with ``backend_args=dict(backend='atomic_local')``.
    """

    def put(self, obj: bytes, filepath) -> None:
        atomic_write_bytes(filepath, obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write_bytes(filepath, obj.encode(encoding))
