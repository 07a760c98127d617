"""Test (and evaluate) a segmentor: mIoU per class and mean, plus GMACs per image and the
fine-token fraction (ComplexityMetric), with mmseg's CLI.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out DIR] [--show-dir DIR]
        [--per-image FILE.jsonl] [--content-gate BUDGET] [--cfg-options ...] [--launcher none|pytorch|slurm|mpi] [--tta]

``--content-gate 0.42`` evaluates the checkpoint (a dense one too) with the training-free content
gate keeping 42% of the regions fine in every image (``mmseg_msvit.apis.with_content_gate``).
``--per-image FILE.jsonl`` writes each image's GMACs and fine mask
(:class:`mmseg_msvit.evaluation.ComplexityMetric`).
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmseg_msvit.apis import with_content_gate  # noqa: E402
from mmseg_msvit.cli import (check_data_folders, check_output_path,  # noqa: E402
                             ensure_runtime_hooks, load_config,
                             number_in, resolve_work_dir, run_cli, setup_cpu_distributed)
from mmseg_msvit.models.checkpoints import read_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a segmentor', formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the metrics json and logs')
    parser.add_argument('--out', help='folder to save predictions for offline evaluation')
    parser.add_argument('--per-image', metavar='FILE.jsonl',
                        help="write each image's cost and decisions, one JSON line per image "
                        '(img_path, backbone / neck + head / whole-model GMACs, fine fraction, '
                        'tokens, the fine mask on the 32 px grid of the resized input)')
    parser.add_argument('--show', action='store_true', help='show predictions')
    parser.add_argument('--show-dir', help='folder for painted predictions')
    parser.add_argument('--wait-time', type=float, default=2, help='show interval (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--content-gate', type=number_in(0, 1, low_open=True), default=None,
                        metavar='BUDGET',
                        help='decide with the training-free content gate, keeping this share of '
                        'regions fine in every image (budget mode); works on dense checkpoints')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation (the config's tta_pipeline); GMACs per "
                        'image are the sum over all views')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help='set by older launchers (torch.distributed.launch)')
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _evaluators(cfg_evaluator):
    return cfg_evaluator if isinstance(cfg_evaluator, (list, tuple)) else [cfg_evaluator]


def build_cfg(args) -> Config:
    read_checkpoint(args.checkpoint, 'checkpoint file')  # exists, is data, is a checkpoint
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    resolve_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    if args.content_gate is not None:
        with_content_gate(cfg, args.content_gate)
    if args.show or args.show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise RuntimeError('--show/--show-dir need default_hooks.visualization')
        hook['draw'] = True
        hook['interval'] = 1  # every test image when asked for (mmseg's default draws 1 in 50)
        if args.show:
            hook['show'] = True
            hook['wait_time'] = args.wait_time
        if args.show_dir:
            cfg.visualizer['save_dir'] = args.show_dir
            # a visualizer of its own (mmengine reuses one of the same name in this process)
            cfg.visualizer.pop('name', None)
    if args.tta:
        missing = [key for key in ('tta_pipeline', 'tta_model') if key not in cfg]
        if missing:
            raise ValueError(f'--tta: the config defines no {" / ".join(missing)}; add them as '
                             "mmseg's dataset configs do (e.g. tta_model = dict(type="
                             "'MSViTSegTTAModel') and a tta_pipeline with TestTimeAug), or drop "
                             '--tta')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        if cfg.tta_model.get('type') == 'SegTTAModel':
            cfg.tta_model.type = 'MSViTSegTTAModel'  # counts the cost of every view
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    evaluators = list(_evaluators(cfg.test_evaluator))
    if not any(e.get('type') == 'ComplexityMetric' for e in evaluators):
        evaluators.append(dict(type='ComplexityMetric'))
    if args.per_image is not None:
        check_output_path('test.py --per-image', args.checkpoint, args.per_image, force=True,
                          example='per_image.jsonl')
        for evaluator in evaluators:
            if evaluator.get('type') == 'ComplexityMetric':
                evaluator['per_image_file'] = args.per_image
    if args.out is not None:
        for evaluator in evaluators:
            if evaluator.get('type') == 'IoUMetric':
                evaluator['output_dir'] = args.out
                evaluator['keep_results'] = True
    cfg.test_evaluator = evaluators
    # CheckpointCheckHook refuses a checkpoint that does not cover the model
    check_data_folders(cfg, ('test_dataloader', ))
    ensure_runtime_hooks(cfg)
    setup_cpu_distributed(cfg)
    return cfg


def main(argv=None):
    runner = Runner.from_cfg(build_cfg(parse_args(argv)))
    return runner.test()


if __name__ == '__main__':
    run_cli(main)
