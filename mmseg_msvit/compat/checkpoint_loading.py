"""Every checkpoint mmengine loads is read as data, whatever torch's settings say.

mmengine's loaders (``CheckpointLoader``: ``load_from``, ``--resume``, ``init_cfg`` Pretrained,
``mmseg.apis.init_model``) call ``torch.load`` without ``weights_only``, so they follow torch's
default, and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (a workaround users set for old checkpoints)
turns that default off: a crafted file would then run its code. :func:`install_weights_only_loaders`
registers, through mmengine's own extension point (``CheckpointLoader.register_scheme``), a local
loader that reads with :func:`mmseg_msvit.models.checkpoints.read_checkpoint`
(``weights_only=True`` given explicitly, which that variable cannot override; refusals in one
sentence) and wraps every other scheme (http, s3, ...) so that its ``torch.load`` runs with
``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``.
"""
import os
import os.path as osp
from contextlib import contextmanager

__all__ = ['install_weights_only_loaders', 'weights_only_loads']

_FORCE = 'TORCH_FORCE_WEIGHTS_ONLY_LOAD'
_FORCE_NO = 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'


@contextmanager
def weights_only_loads():
    """Inside: every ``torch.load`` reads with ``weights_only=True`` (torch's own switch)."""
    saved = {key: os.environ.get(key) for key in (_FORCE, _FORCE_NO)}
    os.environ[_FORCE] = '1'
    os.environ.pop(_FORCE_NO, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_from_local_as_data(filename, map_location=None):
    """mmengine's local scheme, read with ``weights_only=True`` (and safetensors)."""
    from ..models.checkpoints import read_checkpoint
    return read_checkpoint(osp.expanduser(filename), map_location=map_location or 'cpu')


load_from_local_as_data.weights_only = True


def _as_data(loader):
    def load(*args, **kwargs):
        with weights_only_loads():
            return loader(*args, **kwargs)

    load.weights_only = True
    load.__name__ = getattr(loader, '__name__', 'load')
    load.__doc__ = f'{getattr(loader, "__doc__", "") or ""}\n(read with weights_only=True)'
    return load


def install_weights_only_loaders() -> None:
    """Register the data-only loaders for every scheme mmengine knows (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if getattr(loader, 'weights_only', False):
            continue
        CheckpointLoader.register_scheme(
            prefix, load_from_local_as_data if prefix == '' else _as_data(loader), force=True)
