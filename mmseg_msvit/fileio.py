"""Durable file writes with the standard library only, importable from any layer of the package.

:func:`atomic_write` writes to a temporary file beside the target, fsyncs it, gives it the mode
an ordinary ``open(path, 'w')`` would (0666 less the umask; ``mkstemp`` alone gives 0600),
renames it over the target and fsyncs the folder: the file is either the old one or the complete
new one, never a torso. :mod:`mmseg_msvit.engine.fileio` builds mmengine's atomic backend on it.
"""
import os
import os.path as osp
import tempfile
from typing import Callable, Union

#: temporaries are named ``.<target name>.<random>.tmp`` in the target's folder
TMP_SUFFIX = '.tmp'


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, os.PathLike], write: Callable) -> None:
    """Write ``path`` atomically: ``write(file_object)`` fills a temporary file that replaces
    ``path`` only once it is complete and on disk. A crash leaves the previous file (or none)
    and at most a hidden ``.<name>.*.tmp`` that
    :func:`mmseg_msvit.engine.fileio.remove_stale_temporaries` cleans."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix='.' + osp.basename(path) + '.',
                                    suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
