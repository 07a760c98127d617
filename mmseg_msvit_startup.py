"""Lets ``import mmseg.apis`` (or mmseg's own tools) come before ``import mmseg_msvit`` when mmcv
has no compiled ops (mmcv-lite).

mmseg imports ``mmcv.ops`` at import time; mmcv-lite has no compiled ``mmcv._ext``, so that
import fails unless ``mmseg_msvit.compat`` has put its stand-in in place first. This module
installs a finder that supplies the same stand-in whenever ``mmcv.ops`` is imported and
``mmcv._ext`` does not exist; with a full mmcv it does nothing. It imports nothing heavy at
start-up: the stand-in (:mod:`mmseg_msvit.compat.mmcv_ops`, torch only) is loaded on the first
``import mmcv.ops``.

Activated by a ``mmseg_msvit_startup.pth`` file in site-packages (``tools/setup_env.sh`` writes
it into the project's environment; elsewhere run ``python -m mmseg_msvit_startup``, README
"Installation"). Without it, ``import mmseg_msvit`` must simply come first.
"""
import importlib.abc
import importlib.util
import os.path as osp
import sys
import sysconfig

PTH_NAME = 'mmseg_msvit_startup.pth'
_STANDIN_FILE = osp.join(osp.dirname(osp.abspath(__file__)), 'mmseg_msvit', 'compat',
                         'mmcv_ops.py')


class _StandinLoader(importlib.abc.Loader):

    def create_module(self, spec):
        # loaded from its file, not through the mmseg_msvit package, whose import would import
        # mmseg, which is what is importing mmcv.ops right now
        source = importlib.util.spec_from_file_location('_mmseg_msvit_mmcv_ops', _STANDIN_FILE)
        ops = importlib.util.module_from_spec(source)
        source.loader.exec_module(ops)
        return ops.build_standin_module()

    def exec_module(self, module):
        pass


class MmcvOpsFinder(importlib.abc.MetaPathFinder):
    """Supplies the stand-in ``mmcv.ops`` when mmcv has no compiled extension."""

    def find_spec(self, name, path=None, target=None):
        if name != 'mmcv.ops' or importlib.util.find_spec('mmcv._ext') is not None:
            return None
        return importlib.util.spec_from_loader(name, _StandinLoader())


#: warnings the stack prints on every run that say nothing about the user's model or data: a
#: setuptools API mmengine imports, mmseg's internals calling builders it deprecated, and mmseg
#: stating a loss default (kept at mmseg's value in every config); matched by message only
STACK_NOISE = (r'pkg_resources is deprecated', r'``build_\w+`` would be deprecated soon',
               r'Default ``avg_non_ignore`` is False')


def quiet_stack_warnings() -> None:
    """Hide :data:`STACK_NOISE` (every other warning is still shown)."""
    import warnings
    for message in STACK_NOISE:
        warnings.filterwarnings('ignore', message=message, category=UserWarning)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent) and hide :data:`STACK_NOISE`,
    which mmengine prints on import, before anything imports it."""
    if not any(isinstance(finder, MmcvOpsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MmcvOpsFinder())
    quiet_stack_warnings()


def write_pth(site_packages: str = None) -> str:
    """Write the ``.pth`` file that calls :func:`install` at interpreter start-up."""
    folder = site_packages or sysconfig.get_paths()['purelib']
    path = osp.join(folder, PTH_NAME)
    with open(path, 'w') as f:
        f.write('import mmseg_msvit_startup; mmseg_msvit_startup.install()\n')
    return path


if __name__ == '__main__':
    print(f'[mmseg_msvit] wrote {write_pth()}: `import mmseg.apis` now works before '
          '`import mmseg_msvit` with mmcv-lite')
