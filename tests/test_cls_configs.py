"""Every config in configs/msvit_cls builds and trains one iteration on the synthetic ImageNet
layout (the ImageNet configs keep mmpretrain's ImageNet dataset class); the demo's gate transfers
into the segmentation demo with identical decisions."""
import glob
import importlib.util
import os.path as osp

import pytest
from test_configs import (alias_target, assert_every_trainable_parameter_learns,
                          assert_reliability_hooks)
from mmengine.config import Config
from mmengine.runner import Runner

from mmseg_msvit.datasets import CLS_CLASSES

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = [p for p in sorted(glob.glob(osp.join(REPO, 'configs', 'msvit_cls', '*.py')))
           if alias_target(p) is None]  # the short-name alias is checked in test_configs
SIZE = 64


def tiny_cfg(path, root, work_dir):
    cfg = Config.fromfile(path)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = str(root)
        loader.dataset.metainfo = dict(classes=CLS_CLASSES)
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.batch_size = 2
        for transform in loader.dataset.pipeline:
            for key in ('scale', 'crop_size'):
                if key in transform:
                    transform[key] = SIZE
            if transform['type'] == 'ResizeEdge':
                transform['scale'] = SIZE
    if cfg.train_dataloader.dataset.type == 'ImageNet':
        cfg.train_dataloader.dataset.split = 'train'
        cfg.val_dataloader.dataset.split = 'val'
        cfg.test_dataloader.dataset.split = 'val'
    cfg.model.head.num_classes = len(CLS_CLASSES)
    cfg.model.data_preprocessor = dict(cfg.model.get('data_preprocessor') or {},
                                       num_classes=len(CLS_CLASSES))
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('head_from_timm', None)
    if cfg.model.get('gate_loss'):
        cfg.model.gate_loss.grid_size = (SIZE // 32, SIZE // 32)
    cfg.val_evaluator = [dict(type='Accuracy', topk=(1, )), dict(type='ComplexityMetric')]
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(by_epoch=False, max_iters=1, val_interval=1)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = osp.splitext(osp.basename(path))[0]
    return cfg


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.basename(p) for p in CONFIGS])
def test_cls_config_trains_one_iteration(path, synthetic_root, tmp_path):
    raw = Config.fromfile(path)
    assert raw.custom_imports == dict(imports=['mmseg_msvit'], allow_failed_imports=False)
    assert raw.model.type == 'MSViTImageClassifier'
    assert_reliability_hooks(raw)
    if 'in1k' in osp.basename(path):
        assert raw.train_dataloader.dataset.type == 'ImageNet'
        assert raw.model.backbone.init_cfg.type == 'Pretrained'
    cfg = tiny_cfg(path, synthetic_root / 'imagenet', tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert_every_trainable_parameter_learns(runner.model, next(iter(runner.train_dataloader)))
    metrics = runner.val_loop.run()
    assert 'accuracy/top1' in metrics and metrics['complexity/backbone_gmacs'] > 0


def test_demo_gate_transfers_with_identical_decisions(synthetic_root, tmp_path):
    def tool(relative):
        spec = importlib.util.spec_from_file_location(
            osp.basename(relative)[:-3], osp.join(REPO, relative))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    cls_config = osp.join(REPO, 'configs', 'msvit_cls', 'demo_msvit_cls_synthetic.py')
    seg_config = osp.join(REPO, 'configs', 'msvit', 'demo_msvit_synthetic.py')
    cfg = tiny_cfg(cls_config, synthetic_root / 'imagenet', tmp_path)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1, by_epoch=False)
    cfg.train_cfg = dict(by_epoch=False, max_iters=1, val_interval=100)
    Runner.from_cfg(cfg).train()
    gate = tmp_path / 'gate.pth'
    tool('tools/transfer_gate.py').main([str(tmp_path / 'iter_1.pth'), str(gate)])
    options = [f'val_dataloader.dataset.data_root={synthetic_root / "ade"}',
               'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False']
    seg_mean, cls_mean = tool('tools/analysis_tools/check_gate_transfer.py').main(
        [cls_config, str(tmp_path / 'iter_1.pth'), seg_config, str(gate), '--num-images', '2',
         '--cfg-options', *options])
    assert seg_mean == cls_mean
