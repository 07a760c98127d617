"""Every config in configs/msvit builds and trains one iteration on a tiny dataset in the real
folder layout its dataset class reads; the ADE20K/Cityscapes configs keep mmseg's dataset classes."""
import ast
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from mmseg_msvit.cli import fill_distill_teacher

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ALL_CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', 'msvit', '*.py')) +
                     glob.glob(osp.join(REPO, 'configs', 'msvit_cls', 'demo_*.py')))


def alias_target(path):
    """The config a short-name alias points at (a file whose only statement is
    ``_base_ = ['./other.py']``), else None."""
    lines = [line for line in open(path).read().splitlines()
             if line.strip() and not line.lstrip().startswith('#')]
    if len(lines) == 1 and lines[0].startswith('_base_ = ['):
        return osp.normpath(osp.join(osp.dirname(path), ast.literal_eval(lines[0].split('=', 1)[1].strip())[0]))
    return None


# every experiment trains once; the short names users type are checked to be exact aliases
CONFIGS = [p for p in ALL_CONFIGS if alias_target(p) is None and '/msvit_cls/' not in p]
ALIASES = [p for p in ALL_CONFIGS if alias_target(p) is not None]
SIZE = 64  # crops and test resize, px


def _shrink_pipeline(pipeline):
    for transform in pipeline:
        if transform['type'] in ('RandomResize', 'Resize'):
            transform['scale'] = (2 * SIZE, SIZE)
            if transform['type'] == 'RandomResize':
                transform['ratio_range'] = (1.0, 1.0)
        if transform['type'] == 'RandomCrop':
            transform['crop_size'] = (SIZE, SIZE)


def tiny_cfg(path, synthetic_root, work_dir):
    cfg = Config.fromfile(path)
    dataset_type = cfg.train_dataloader.dataset.type
    layout = 'cityscapes' if 'Cityscapes' in dataset_type else 'ade'
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = str(synthetic_root / layout)
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.batch_size = 2 if loader is cfg.train_dataloader else 1
        _shrink_pipeline(loader.dataset.pipeline)
    if layout == 'cityscapes':
        cfg.train_dataloader.dataset.data_prefix = dict(img_path='leftImg8bit/train',
                                                        seg_map_path='gtFine/train')
    cfg.model.data_preprocessor.size = (SIZE, SIZE)
    cfg.model.backbone.init_cfg = None  # no pretrained file on a test machine
    if cfg.model.get('gate_loss'):
        cfg.model.gate_loss.grid_size = (SIZE // 32, SIZE // 32)
    if cfg.model.test_cfg.get('mode') == 'slide':
        cfg.model.test_cfg.crop_size = (SIZE, SIZE)
        cfg.model.test_cfg.stride = (SIZE // 2, SIZE // 2)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=1)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook')
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = osp.splitext(osp.basename(path))[0]
    if cfg.model.get('distill'):
        # step 2 of the recipe starts from (and is distilled from) a dense model: this config's
        # own model without its step-2 parts, freshly initialised, stands in for it (a teacher
        # file with weights the dense model lacks would be refused)
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS
        init_default_scope('mmseg')
        stand_in = cfg.model.copy()
        stand_in.pop('distill')
        stand_in.backbone.update(coarse_detail=False, coarse_scale_embed=False)
        stand_in.neck.update(coarse_unpool=False)
        dense = MODELS.build(stand_in)
        dense.init_weights()
        teacher = osp.join(str(work_dir), 'dense_step1.pth')
        torch.save({'state_dict': dense.state_dict(), 'meta': {}}, teacher)
        cfg.load_from = teacher
        fill_distill_teacher(cfg)
        if cfg.model.distill.get('teacher', 'checkpoint') == 'checkpoint':
            assert cfg.model.distill.teacher_checkpoint == teacher
        else:  # one stage: the model's own dense pass teaches, load_from is only the start
            assert cfg.model.distill.teacher == 'self'
            assert cfg.model.distill.get('teacher_checkpoint') is None
    return cfg, dataset_type


def assert_reliability_hooks(cfg):
    """The config itself (not only our tools) asks for the hooks that keep runs safe."""
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    assert {h['type'] for h in cfg.custom_hooks} >= {'ExactResumeHook', 'CheckpointCheckHook',
                                                      'CustomKeysCheckHook', 'FiniteLossHook',
                                                      'TrainingTimeHook'}


def assert_every_trainable_parameter_learns(model, batch):
    """One training forward/backward reaches every parameter with requires_grad (otherwise
    DistributedDataParallel stops at its second iteration on the 8xb2 recipes)."""
    model.train()
    model.zero_grad(set_to_none=True)
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    loss.backward()
    idle = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle, f'trainable parameters without gradient: {idle}'


@pytest.mark.parametrize('path', ALIASES, ids=[osp.basename(p) for p in ALIASES])
def test_short_name_is_an_exact_alias(path):
    target = alias_target(path)
    assert osp.isfile(target) and alias_target(target) is None, \
        f'{osp.basename(path)} points at {target}, not an experiment'
    alias, original = Config.fromfile(path), Config.fromfile(target)
    assert alias.to_dict() == original.to_dict()


def test_config_names():
    names = {osp.basename(p) for p in ALL_CONFIGS}
    for required in ('upernet_msvit_ade20k.py', 'upernet_msvit_cityscapes.py',
                     'segmenter_msvit-s_mask_ade20k.py', 'segmenter_msvit-s_linear_ade20k.py',
                     'msvit-s16-32_upernet_8xb2-160k_ade20k-512x512.py',
                     'upernet_vit-s16-dense_ade20k.py', 'upernet_vit-s32-coarse_ade20k.py'):
        assert required in names


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.basename(p) for p in CONFIGS])
def test_config_trains_one_iteration(path, synthetic_root, tmp_path):
    raw = Config.fromfile(path)
    assert raw.custom_imports == dict(imports=['mmseg_msvit'], allow_failed_imports=False)
    assert raw.model.type == 'MSViTEncoderDecoder' and raw.model.backbone.type == 'MSViT'
    assert_reliability_hooks(raw)
    if raw.model.backbone.get('force_scale') is None and raw.model.get('gate_loss'):
        crop = raw.crop_size
        assert tuple(raw.model.gate_loss.grid_size) == (crop[0] // 32, crop[1] // 32), \
            'GBaS grid must be the coarse grid of the training crop'
    cfg, dataset_type = tiny_cfg(path, synthetic_root, tmp_path)
    expected = {'ade20k': 'CheckedADE20KDataset', 'cityscapes': 'CheckedCityscapesDataset',
                'synthetic': 'SyntheticScenesDataset'}
    name = osp.basename(path)
    key = next((k for k in expected if k in name), 'synthetic')
    assert dataset_type == expected[key], f'{name} reads {dataset_type}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 1
    assert_every_trainable_parameter_learns(runner.model, next(iter(runner.train_dataloader)))
    metrics = runner.val_loop.run()
    assert 'mIoU' in metrics and 'complexity/backbone_gmacs' in metrics
    assert metrics['complexity/backbone_gmacs'] > 0
    if raw.model.backbone.get('force_scale') is not None:
        # a forced scale never runs the gate: a dense (or all-coarse) checkpoint carries none
        gate = [k for k in runner.model.state_dict() if k.startswith('backbone.gate.')]
        assert not gate, f'{name} forces every region {raw.model.backbone.force_scale} but its ' \
            f'model has gate weights {gate[:3]}'
