import os

import pytest

import mmseg_msvit  # noqa: F401  (registers everything, installs the compat shims)

os.environ.setdefault('OMP_NUM_THREADS', '2')


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
    """Small synthetic datasets in all three layouts, made once per test session."""
    from mmseg_msvit.datasets import make_synthetic
    root = tmp_path_factory.mktemp('synthetic')
    make_synthetic(str(root / 'ade'), 'ade20k', num_train=4, num_val=2, img_size=(96, 128))
    make_synthetic(str(root / 'cityscapes'), 'cityscapes', num_train=4, num_val=2,
                   img_size=(64, 128))
    make_synthetic(str(root / 'imagenet'), 'imagenet', num_train=3, num_val=2, img_size=(64, 64))
    return root
