"""Installs the ``mmseg_msvit`` package (``pip install -e .``).

The pinned stack lives in requirements/*.txt; ``make test`` / ``make demo`` create a virtual
environment and install it (see README). ``install_requires`` lists the same packages so that
``pip install .`` into an existing environment pulls what is missing. Note: nothing here asks for
``mmcv`` itself (it compiles from source for 20+ minutes); mmcv-lite is used instead.
"""
import os.path as osp

from setuptools import find_packages, setup


def read_requirements(fname):
    path = osp.join(osp.dirname(__file__), 'requirements', fname)
    with open(path) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line]


def read_version():
    namespace = {}
    with open(osp.join(osp.dirname(__file__), 'mmseg_msvit', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='mmseg_msvit',
    version=read_version(),
    description='MSViT: dynamic mixed-scale tokenization for Vision Transformers, '
    'as an MMSegmentation 1.x extension',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmseg_msvit', 'mmseg_msvit.*']),
    python_requires='>=3.9',
    install_requires=read_requirements('torch.txt') + read_requirements('runtime.txt'),
    extras_require={'tests': read_requirements('tests.txt')},
    license='Apache License 2.0',
    zip_safe=False,
)
