"""Train a segmentor (mmseg's CLI; MSViT components registered by ``import mmseg_msvit``).

    python tools/train.py configs/msvit/upernet_msvit_ade20k.py [--work-dir DIR] [--resume]
        [--amp] [--cfg-options key=value ...] [--launcher none|pytorch|slurm|mpi]

Distributed: ``tools/dist_train.sh CONFIG N [args]`` (torchrun). Without GPUs it runs N CPU
processes over gloo (:func:`mmseg_msvit.cli.setup_cpu_distributed`).
"""
import argparse
import logging
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # noqa: E402  (a clone)

import mmseg_msvit  # noqa: E402,F401  (compat shims + registration, before any model import)
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import RUNNERS  # noqa: E402

from mmseg_msvit.cli import (check_data_folders, ensure_runtime_hooks,  # noqa: E402
                             fill_distill_teacher, load_config, resolve_work_dir, run_cli,
                             setup_cpu_distributed)
from mmseg_msvit.models.checkpoints import read_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train a segmentor', formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (fp16 with loss scaling on a GPU, '
                        'bfloat16 autocast on a CPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by older launchers (torch.distributed.launch)')
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_cfg(args) -> Config:
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    resolve_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper == 'AmpOptimWrapper':
            print_log('AMP is already enabled in the config', logger='current',
                      level=logging.WARNING)
        elif wrapper != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, got {wrapper}')
        elif not torch.cuda.is_available():
            # mmengine's AmpOptimWrapper asserts a GPU: bfloat16 autocast on the CPU instead
            cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
            cfg.optim_wrapper.dtype = 'bfloat16'
            print_log('--amp without a GPU: bfloat16 autocast on the CPU '
                      '(CPUAutocastOptimWrapper; no loss scaling needed)', logger='current')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    if cfg.get('load_from'):
        read_checkpoint(cfg.load_from, 'load_from checkpoint')  # clear error before training
    fill_distill_teacher(cfg)
    check_data_folders(cfg, ('train_dataloader', 'val_dataloader'))
    ensure_runtime_hooks(cfg)
    setup_cpu_distributed(cfg)
    return cfg


def main(argv=None):
    cfg = build_cfg(parse_args(argv))
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    run_cli(main)
