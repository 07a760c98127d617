"""mmseg-msvit: dynamic mixed-scale tokenization (MSViT) for MMSegmentation 1.x.

``import mmseg_msvit`` installs the compatibility shims (see :mod:`mmseg_msvit.compat`)
and registers every component into mmseg's (and mmpretrain's) registries.
"""
import mmseg_msvit_startup as _startup

_startup.quiet_stack_warnings()  # before mmengine and mmseg print them

from . import compat  # noqa: E402
from .version import __version__  # noqa: E402

compat.install()

from . import datasets, engine, evaluation, models  # noqa: E402,F401  (registration)

__all__ = ['__version__', 'compat', 'datasets', 'engine', 'evaluation', 'models']
