"""Installs the ``mmseg_msvit`` package (``pip install -e .`` or ``pip install .``).

``install_requires`` declares the RANGES the package supports, so installing it into a working
MMSegmentation environment keeps that environment's torch and OpenMMLab versions. The exact
versions this project is developed and tested with are pinned in requirements/*.txt, which
``make`` installs into ``./.venv`` (see README).

mmcv is not declared: mmsegmentation's own package metadata does not declare it either, and a
requirement on ``mmcv`` or on ``mmcv-lite`` would install one beside the other (both provide the
``mmcv`` package). Either works: a full, compiled mmcv (2.0-2.1), or mmcv-lite, whose missing
compiled ops ``mmseg_msvit.compat`` replaces (README, "Installation").
"""
import ast
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))

#: supported ranges (the tested pins: requirements/torch.txt and requirements/runtime.txt)
INSTALL_REQUIRES = [
    'torch>=2.4',  # torch.load(weights_only=True) with allow-listed globals, torch.export
    'mmengine>=0.10.0,<1.0',
    'mmsegmentation>=1.2.0,<1.3',
    'mmpretrain>=1.2.0,<1.3',
    'timm>=1.0.16',  # Block.forward(x, attn_mask), Attention.norm (models/packed.py)
    'numpy',
    'ftfy',  # imported by mmseg at import time but not declared by it
    'regex',
    'matplotlib',
    'safetensors',
]
EXTRAS_REQUIRE = {
    'tests': ['pytest', 'onnx', 'onnxruntime', 'onnxscript'],
    'export': ['onnx', 'onnxruntime', 'onnxscript'],
}


def read_version() -> str:
    """``__version__`` from mmseg_msvit/version.py, parsed (never executed)."""
    with open(osp.join(HERE, 'mmseg_msvit', 'version.py')) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '__version__' for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError('mmseg_msvit/version.py defines no __version__')


if __name__ == '__main__':
    with open(osp.join(HERE, 'README.md')) as f:
        long_description = f.read()
    setup(
        name='mmseg_msvit',
        version=read_version(),
        description='MSViT: dynamic mixed-scale tokenization for Vision Transformers, '
        'as an MMSegmentation 1.x extension',
        long_description=long_description,
        long_description_content_type='text/markdown',
        packages=find_packages(include=['mmseg_msvit', 'mmseg_msvit.*']),
        py_modules=['mmseg_msvit_startup'],
        python_requires='>=3.9',
        install_requires=INSTALL_REQUIRES,
        extras_require=EXTRAS_REQUIRE,
        license='Apache License 2.0',
        zip_safe=False,
    )
