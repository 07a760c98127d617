"""Synthetic datasets: determinism, content that makes the method's point, real loaders."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from mmengine.registry import DefaultScope
from PIL import Image

from mmseg_msvit.datasets import SCENE_CLASSES, make_synthetic
from mmseg_msvit.datasets.synthetic import CLS_CLASSES, render_scene

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(root):
    digest = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(os.path.join(dirpath, name), 'rb') as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        make_synthetic(str(tmp_path / name), 'ade20k', num_train=2, num_val=1, img_size=(64, 64),
                       seed=seed)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_scenes_have_smooth_regions_and_fine_detail():
    rng = np.random.default_rng(0)
    smooth_std, detail_std, stripe_vs_wall = [], [], []
    for _ in range(6):
        image, label = render_scene(rng, (256, 256))
        img = image.astype(np.float64)
        assert set(np.unique(label)) <= set(range(len(SCENE_CLASSES) + 1))
        for y in range(0, 256, 32):
            for x in range(0, 256, 32):
                cell_label = label[y:y + 32, x:x + 32]
                cell = img[y:y + 32, x:x + 32]
                if np.all(cell_label == cell_label[0, 0]) and cell_label[0, 0] in (1, 2, 3):
                    smooth_std.append(cell.std(axis=(0, 1)).max())
                elif np.isin(cell_label, (5, 6, 7)).mean() > 0.05:
                    detail_std.append(cell.std(axis=(0, 1)).max())
        # the striped texture has the wall's mean colour: only fine detail separates them
        stripes, wall = img[label == 4], img[label == 2]
        if len(stripes):
            stripe_vs_wall.append(np.abs(stripes.mean(0) - wall.mean(0)).max())
            assert stripes.std(0).max() > 30
    assert np.median(smooth_std) < 12, 'flat/gradient regions should be smooth'
    assert np.median(detail_std) > 25, 'regions with small objects should be busy'
    assert stripe_vs_wall and max(stripe_vs_wall) < 15
    # several classes and sizes are present over a handful of scenes
    labels = np.concatenate([render_scene(np.random.default_rng(s), (128, 128))[1].ravel()
                             for s in range(4)])
    assert set(range(1, len(SCENE_CLASSES) + 1)) <= set(np.unique(labels))


def test_ade20k_dataset_reads_the_ade_layout(synthetic_root):
    from mmseg.datasets import ADE20KDataset
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = ADE20KDataset(data_root=str(synthetic_root / 'ade'),
                                data_prefix=dict(img_path='images/validation',
                                                 seg_map_path='annotations/validation'),
                                pipeline=pipeline)
    assert len(dataset) == 2
    sample = dataset[0]
    assert sample['img'].shape == (96, 128, 3)
    values = set(np.unique(sample['gt_seg_map']))
    assert values <= set(range(len(SCENE_CLASSES))) | {255}
    assert len(values - {255}) >= 3


def test_synthetic_scenes_dataset_has_our_classes(synthetic_root):
    from mmseg.registry import DATASETS
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = DATASETS.build(dict(
            type='SyntheticScenesDataset', data_root=str(synthetic_root / 'ade'),
            data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
            pipeline=[]))
    assert len(dataset) == 4
    assert dataset.metainfo['classes'] == SCENE_CLASSES


def test_cityscapes_dataset_reads_the_cityscapes_layout(synthetic_root):
    from mmseg.datasets import CityscapesDataset
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')]
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = CityscapesDataset(data_root=str(synthetic_root / 'cityscapes'),
                                    data_prefix=dict(img_path='leftImg8bit/train',
                                                     seg_map_path='gtFine/train'),
                                    pipeline=pipeline)
    assert len(dataset) == 4
    sample = dataset[1]
    assert sample['img'].shape == (64, 128, 3)
    assert set(np.unique(sample['gt_seg_map'])) <= set(range(len(SCENE_CLASSES))) | {255}


@pytest.mark.parametrize('dataset_type', ['ImageNet', 'CustomDataset'])
def test_mmpretrain_reads_the_imagenet_layout(synthetic_root, dataset_type):
    from mmpretrain.registry import DATASETS
    cfg = dict(type=dataset_type, data_root=str(synthetic_root / 'imagenet'),
               metainfo=dict(classes=CLS_CLASSES), pipeline=[dict(type='LoadImageFromFile')])
    if dataset_type == 'ImageNet':
        cfg['split'] = 'val'
    else:
        cfg['data_prefix'] = 'train'
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(cfg)
    per_class = 2 if dataset_type == 'ImageNet' else 3
    assert len(dataset) == per_class * len(CLS_CLASSES)
    labels = sorted(dataset.get_gt_labels().tolist())
    assert labels == sorted(list(range(len(CLS_CLASSES))) * per_class)
    assert dataset[0]['img'].shape == (64, 64, 3)


def test_bad_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="layout='coco'"):
        make_synthetic(str(tmp_path / 'x'), 'coco')
    with pytest.raises(ValueError, match='num_train=0'):
        make_synthetic(str(tmp_path / 'x'), 'ade20k', num_train=0)
    with pytest.raises(ValueError, match='smaller than one 32x32'):
        make_synthetic(str(tmp_path / 'x'), 'ade20k', img_size=(16, 64))
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(OSError, match='cannot create out_dir'):
        make_synthetic(str(blocker / 'sub'), 'ade20k')
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match='not writable'):
            make_synthetic(str(locked), 'ade20k')


def test_cli_writes_and_reports(tmp_path):
    tool = os.path.join(REPO, 'tools', 'dataset_converters', 'make_synthetic.py')
    out = subprocess.run([sys.executable, tool, str(tmp_path / 'cls'), '--layout', 'imagenet',
                          '--num-train', '1', '--num-val', '1', '--img-size', '48', '48'],
                         capture_output=True, text=True, check=True)
    assert 'train=5' in out.stdout and 'val=5' in out.stdout
    assert (tmp_path / 'cls' / 'meta' / 'val.txt').read_text().count('\n') == len(CLS_CLASSES)
    image = Image.open(tmp_path / 'cls' / 'train' / 'dots' / 'dots_train_00000.JPEG')
    assert image.size == (48, 48)
    bad = subprocess.run([sys.executable, tool, str(tmp_path / 'y'), '--layout', 'voc'],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown layout='voc'" in bad.stderr


def test_bad_files_in_a_dataset_are_errors_naming_the_file(tmp_path):
    """An empty image, an RGB picture as a label, a label of another size: each refused with
    the file's name (before cv2 or the loss could fail on it without one)."""
    import numpy as np
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    from PIL import Image

    from mmseg_msvit.datasets import make_synthetic
    root = tmp_path / 'ade'
    make_synthetic(str(root), 'ade20k', num_train=3, num_val=1, img_size=(64, 64))
    init_default_scope('mmseg')
    images = sorted((root / 'images' / 'training').iterdir())
    labels = sorted((root / 'annotations' / 'training').iterdir())
    images[0].write_bytes(b'')
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(labels[1])
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(labels[2])
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    for type_name in ('SyntheticScenesDataset', 'CheckedADE20KDataset'):
        dataset = DATASETS.build(dict(
            type=type_name, data_root=str(root), pipeline=pipeline,
            data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
        with pytest.raises(ValueError, match=f'image .*{images[0].name}.* empty file'):
            dataset[0]
        with pytest.raises(ValueError, match=f'label .*{labels[1].name}.* RGB image: a label '
                           'map has one channel'):
            dataset[1]
        with pytest.raises(ValueError, match=f'label .*{labels[2].name}.* is 32x64 px but its '
                           f'image .*{images[2].name}.* is 64x64 px'):
            dataset[2]


def test_labels_with_class_ids_outside_the_dataset_are_named_on_load(tmp_path):
    """A label holding a class id the dataset does not have is refused the first time the file
    is loaded, naming the file, the id and its pixel count (not at whichever iteration a crop
    first meets it, deep in the loss)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    root = tmp_path / 'ade'
    make_synthetic(str(root), 'ade20k', num_train=2, num_val=1, img_size=(64, 64))
    init_default_scope('mmseg')
    labels = sorted((root / 'annotations' / 'training').iterdir())
    bad = np.asarray(Image.open(labels[1])).copy()
    bad[:3, :4] = 9  # 7 classes: ids 1..7 (0 is 'other', ignored), and 255
    Image.fromarray(bad).save(labels[1])
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='RandomCrop', crop_size=(8, 8)), dict(type='PackSegInputs')]
    dataset = DATASETS.build(dict(
        type='SyntheticScenesDataset', data_root=str(root), pipeline=pipeline,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
    dataset[0]  # a good label loads
    with pytest.raises(ValueError, match=f'label .*{labels[1].name}.* class ids outside this '
                       r"dataset's 0\.\.7 \(and 255, ignored\): 9 \(12 px\)"):
        dataset[1]


def test_shifted_scenes_draw_the_same_classes_differently(tmp_path):
    """`style='shifted'`: the same 7 classes (and 'other'), another palette and gravel floors
    whose pixels are detailed inside one label; deterministic like the standard style."""
    import numpy as np

    from mmseg_msvit.datasets.synthetic import render_scene, render_shifted_scene
    standard, shifted = [], []
    for index in range(6):
        standard.append(render_scene(np.random.default_rng([0, 0, index]), (128, 160)))
        shifted.append(render_shifted_scene(np.random.default_rng([0, 0, index]), (128, 160)))
    labels = set(np.unique(np.concatenate([lab.ravel() for _, lab in shifted])))
    assert {1, 2, 3, 4, 5, 6, 7} <= labels <= set(range(8))
    # floors: smooth in the standard style, gravel (strong per-pixel texture) in the shifted one
    def floor_texture(scenes):
        values = [np.abs(np.diff(img.astype(float), axis=1))[lab[:, 1:] == 3].mean()
                  for img, lab in scenes]
        return float(np.mean(values))
    assert floor_texture(shifted) > 5 * floor_texture(standard)
    again = render_shifted_scene(np.random.default_rng([0, 0, 0]), (128, 160))
    assert np.array_equal(again[0], shifted[0][0]) and np.array_equal(again[1], shifted[0][1])
    from mmseg_msvit.datasets import make_synthetic
    with pytest.raises(ValueError, match="unknown style='photo'"):
        make_synthetic(str(tmp_path), style='photo')
