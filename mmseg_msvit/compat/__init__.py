"""What ``import mmseg_msvit`` must change in other libraries for mmseg to import and load its
own checkpoints at all, one module per concern:

1. :mod:`.mmcv_ops` - a stand-in ``mmcv.ops`` when mmcv has no compiled ops (mmcv-lite); nothing
   changes with a full mmcv.
2. :mod:`.checkpoint_globals` - the non-tensor types of mmengine checkpoints allow-listed for
   ``torch.load(weights_only=True)``; anything else stays refused.
3. :mod:`.checkpoint_loading` - mmengine's checkpoint loaders read with ``weights_only=True``
   even when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.

Atomic checkpoint writes are not a shim: they are the ``atomic_local`` file backend and
``SafeCheckpointHook`` in :mod:`mmseg_msvit.engine`, chosen by the runtime config.
``install()`` is idempotent.
"""
from .checkpoint_globals import checkpoint_safe_globals, install_checkpoint_safe_globals
from .checkpoint_loading import install_weights_only_loaders, weights_only_loads
from .mmcv_ops import (PLACEHOLDER_OPS, MissingMmcvOpError, install_mmcv_ops_standin,
                       mmcv_has_compiled_ops, point_sample, sigmoid_focal_loss)

__all__ = [
    'install', 'MissingMmcvOpError', 'point_sample', 'sigmoid_focal_loss',
    'mmcv_has_compiled_ops', 'checkpoint_safe_globals', 'PLACEHOLDER_OPS',
    'install_weights_only_loaders', 'weights_only_loads'
]

_installed = False


def install() -> None:
    """Install the shims (idempotent)."""
    global _installed
    if _installed:
        return
    install_mmcv_ops_standin()
    install_checkpoint_safe_globals()
    install_weights_only_loaders()
    _installed = True
