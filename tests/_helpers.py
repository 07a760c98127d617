"""Shared by the test modules: load a command-line tool from tools/ as a module."""
import importlib.util
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(relative):
    """Import ``tools/...py`` (not a package) so a test can call its ``main(argv)``."""
    path = osp.join(REPO, relative)
    spec = importlib.util.spec_from_file_location(osp.splitext(osp.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
