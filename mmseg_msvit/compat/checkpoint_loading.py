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

mmengine also EXECUTES config text it finds in a checkpoint (``Runner.resume`` runs
``meta['config']``; its inferencers run ``meta['cfg']`` when given no config). Both loaders remove
such text unless it is plain data (:func:`config_text_as_data`), so whatever hooks a config lists,
and whichever ``tools/train.py`` (ours or mmseg's) resumes, no checkpoint text runs.
"""
import logging
import os
import os.path as osp
from contextlib import contextmanager

from .checkpoint_globals import checked_after_loading

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


def config_text_as_data(checkpoint, source: str = 'checkpoint'):
    """Remove from a checkpoint the config texts that mmengine would execute and that are not
    plain data (:func:`mmseg_msvit.models.checkpoints.config_text_problem`): ``meta['config']``
    (``Runner.resume`` runs it to read the GPU count), ``meta['cfg']`` and the message hub's
    ``runtime_info['cfg']`` (mmengine's inferencers run them when no config is given). What
    mmengine itself writes is plain data and stays. Returns ``checkpoint``."""
    from mmengine.logging import print_log

    from ..models.checkpoints import config_text_problem
    if not isinstance(checkpoint, dict):
        return checkpoint
    meta = checkpoint.get('meta')
    hub = checkpoint.get('message_hub')
    runtime = hub.get('runtime_info') if isinstance(hub, dict) else None
    for where, holder, key in (('meta', meta, 'config'), ('meta', meta, 'cfg'),
                               ('message_hub.runtime_info', runtime, 'cfg')):
        if not isinstance(holder, dict) or key not in holder:
            continue
        problem = config_text_problem(holder[key])
        if problem is not None:
            holder.pop(key)
            print_log(f'{source}: ignored the config text in {where}[{key!r}] (it is never '
                      f'executed, and it is not plain data: {problem})', logger='current',
                      level=logging.WARNING)
    return checkpoint


def load_from_local_as_data(filename, map_location=None):
    """mmengine's local scheme, read with ``weights_only=True`` (and safetensors); config text
    that is not plain data removed (:func:`config_text_as_data`)."""
    from ..models.checkpoints import read_checkpoint
    return config_text_as_data(
        read_checkpoint(osp.expanduser(filename), map_location=map_location or 'cpu'),
        str(filename))


load_from_local_as_data.weights_only = True


def _as_data(loader):
    def load(*args, **kwargs):
        import pickle

        from ..models.checkpoints.reading import refusal
        source = str(args[0]) if args else 'checkpoint'
        with weights_only_loads():
            try:
                loaded = checked_after_loading(loader(*args, **kwargs))
            except pickle.UnpicklingError as err:  # torch's message says weights_only=False
                raise refusal(err, 'checkpoint', source) from None
        return config_text_as_data(loaded, source)

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
