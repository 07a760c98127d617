"""mIoU against GMACs of one checkpoint: sweep the gate threshold and/or the fine budget.

    python tools/analysis_tools/benchmark_tradeoff.py CONFIG CHECKPOINT
        [--thresholds 0.1 0.3 0.5 0.7 0.9] [--budgets 0.1 0.25 0.5 0.75 1.0]
        [--content-gate] [--baseline CONFIG CHECKPOINT LABEL ...] [--out-dir work_dirs/tradeoff]
        [--cfg-options ...]

Threshold mode (adaptive per image) moves few regions once GBaS has made the gate decisive;
budget mode (exactly that share of regions fine in every image, the gate's highest scores)
spans the whole range from one checkpoint. Each setting is a scale policy passed to every
``predict`` of its evaluation (``ScalePolicy``; the model is not changed), over the whole
validation set (mIoU, mean backbone, neck + head and whole-model GMACs per image when the neck
and head count what they ran, fine fraction, images/s). ``--content-gate`` sweeps the budget with
the training-free content gate instead of the model's gate (any checkpoint, a dense one
included). A question the model cannot answer is refused, not answered with another: a budget or
threshold on a dense config (every region forced fine) without ``--content-gate``, thresholds
with the content gate (its scores are not probabilities).
Extra config/checkpoint pairs (the dense baseline, a lower-resolution baseline, ...) are
evaluated once and drawn as points. Writes tradeoff.csv, tradeoff.json and tradeoff.png (both
curves + baselines on one plot) to --out-dir.
"""
import csv
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

from mmengine.config import DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.cli import ensure_runtime_hooks, load_config, tool_parser  # noqa: E402

FIELDS = ('label', 'threshold', 'budget', 'mIoU', 'backbone_gmacs', 'decode_gmacs',
          'model_gmacs', 'fine_fraction', 'images_per_s')


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--thresholds', type=float, nargs='*', default=None,
                        help='gate thresholds in [0, 1] (threshold mode); default 0.1 0.3 0.5 '
                        '0.7 0.9 when --budgets is not given, none when it is')
    parser.add_argument('--budgets', type=float, nargs='*', default=[],
                        help='fine budgets in (0, 1] (budget mode: that share of regions fine '
                        'in every image); default: none')
    parser.add_argument('--content-gate', action='store_true',
                        help='sweep the budgets with the training-free content gate (as '
                        'tools/test.py --content-gate) instead of the model\'s own gate')
    parser.add_argument('--baseline', nargs=3, action='append', default=[],
                        metavar=('CONFIG', 'CHECKPOINT', 'LABEL'),
                        help='another model evaluated once and drawn as a point (repeatable)')
    parser.add_argument('--out-dir', default='work_dirs/tradeoff',
                        help='folder for tradeoff.csv/json/png (default work_dirs/tradeoff)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='applied to every config')
    args = parser.parse_args(argv)
    if args.thresholds is None:
        args.thresholds = [] if args.budgets else [0.1, 0.3, 0.5, 0.7, 0.9]
    if not args.thresholds and not args.budgets:
        parser.error('nothing to evaluate: give at least one value to --thresholds or --budgets '
                     '(both were given empty)')
    if args.content_gate and args.thresholds:
        parser.error('--content-gate with --thresholds: the content gate\'s scores are not '
                     'probabilities, a threshold means nothing for it; sweep --budgets')
    for threshold in args.thresholds:
        if not 0.0 <= threshold <= 1.0:
            parser.error(f'--thresholds: {threshold} is not in [0, 1]')
    for budget in args.budgets:
        if not 0.0 < budget <= 1.0:
            parser.error(f'--budgets: {budget} is not in (0, 1]')
    for path in [args.config, args.checkpoint] + [p for b in args.baseline for p in b[:2]]:
        if not osp.isfile(path):
            parser.error(f'file {path!r} does not exist')
    return args


def build_runner(config, checkpoint, cfg_options, work_dir):
    cfg = load_config(config, cfg_options)
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    ensure_runtime_hooks(cfg)  # refuses a checkpoint that does not cover the model
    cfg.model.backbone.init_cfg = None
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else \
        [cfg.test_evaluator]
    if not any(e.get('type') == 'ComplexityMetric' for e in evaluators):
        evaluators = list(evaluators) + [dict(type='ComplexityMetric')]
    cfg.test_evaluator = evaluators
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10 ** 6)
    runner = Runner.from_cfg(cfg)
    runner.test_loop  # noqa: B018  (builds the loop, dataloader and evaluator)
    runner.call_hook('before_run')
    runner.load_or_resume()
    return runner


def sweep_policy(backbone, threshold=None, budget=None, content_gate=False):
    """The scale policy of one setting of the sweep, or a ValueError when the model cannot
    answer it (a forced scale without the content gate; a threshold on a parameter-free
    gate)."""
    from mmseg_msvit.models import ContentGate, ScalePolicy
    if content_gate:  # a model whose own gate is a content gate keeps its score, as test.py
        own = backbone.gate if isinstance(backbone.gate, ContentGate) else None
        return ScalePolicy.with_budget(budget, gate=own or ContentGate.like(backbone))
    policy = backbone.policy
    if policy.force_scale is not None:
        raise ValueError(f'benchmark_tradeoff: the config forces every region '
                         f'{policy.force_scale} (force_scale={policy.force_scale!r}: a dense or '
                         'all-coarse model), so a budget or threshold has no gate to decide it; '
                         'add --content-gate to sweep budgets with the training-free content '
                         'gate, or give a mixed-scale config')
    if threshold is not None:
        if not any(True for _ in backbone.gate.parameters()):
            raise ValueError(f'benchmark_tradeoff: the model\'s gate ({type(backbone.gate).__name__}'
                             ') has no probabilities to threshold; sweep --budgets instead')
        return ScalePolicy.with_threshold(threshold)
    return ScalePolicy.with_budget(budget)


def evaluate(runner, label, threshold=None, budget=None, content_gate=False):
    """One pass of the test set, as mmengine's ``TestLoop.run`` makes it (hooks, fp16 autocast,
    the evaluator), with the scale policy of this setting passed to every ``predict``; the
    model itself is never changed."""
    import torch
    from mmengine.runner.amp import autocast
    model, loop = runner.model, runner.test_loop
    policy = model.backbone.policy
    if threshold is not None or budget is not None:
        policy = sweep_policy(model.backbone, threshold, budget, content_gate)
    num_images = len(loop.dataloader.dataset)
    start = time.perf_counter()
    runner.call_hook('before_test')
    runner.call_hook('before_test_epoch')
    model.eval()
    for index, batch in enumerate(loop.dataloader):
        runner.call_hook('before_test_iter', batch_idx=index, data_batch=batch)
        with torch.no_grad(), autocast(enabled=loop.fp16):
            data = model.data_preprocessor(batch, False)  # what test_step does, plus a policy
            outputs = model.predict(data['inputs'], data['data_samples'], policy=policy)
        loop.evaluator.process(data_samples=outputs, data_batch=batch)
        runner.call_hook('after_test_iter', batch_idx=index, data_batch=batch, outputs=outputs)
    metrics = loop.evaluator.evaluate(num_images)
    runner.call_hook('after_test_epoch', metrics=metrics)
    runner.call_hook('after_test')
    seconds = time.perf_counter() - start
    return dict(label=label, threshold=threshold, budget=budget, mIoU=float(metrics['mIoU']),
                backbone_gmacs=float(metrics['complexity/backbone_gmacs']),
                decode_gmacs=float(metrics.get('complexity/decode_gmacs', float('nan'))),
                model_gmacs=float(metrics.get('complexity/model_gmacs', float('nan'))),
                fine_fraction=float(metrics['complexity/fine_fraction']),
                images_per_s=round(num_images / seconds, 3))


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    whole = all(r['model_gmacs'] == r['model_gmacs'] for r in rows)  # no NaN: both panels
    panels = [('backbone_gmacs', 'backbone GMACs per image')] + (
        [('model_gmacs', 'whole-model GMACs per image (backbone + neck + head)')]
        if whole else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharey=True,
                             squeeze=False)
    for ax, (x_key, title) in zip(axes[0], panels):
        for key, style, name in (('threshold', 'o-', 'gate threshold sweep'),
                                 ('budget', 'D--', 'fine budget sweep')):
            curve = [r for r in rows if r[key] is not None]
            if not curve:
                continue
            ax.plot([r[x_key] for r in curve], [r['mIoU'] for r in curve], style,
                    label=f'{curve[0]["label"]} ({name})')
            for r in curve:
                ax.annotate(f'{r[key]:.2f}', (r[x_key], r['mIoU']),
                            textcoords='offset points', xytext=(4, 4), fontsize=8)
        for r in rows:
            if r['threshold'] is None and r['budget'] is None:
                ax.plot(r[x_key], r['mIoU'], 's', markersize=8, label=r['label'])
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('mIoU')
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    runner = build_runner(args.config, args.checkpoint, args.cfg_options,
                          osp.join(args.out_dir, 'runs'))
    label = osp.splitext(osp.basename(args.config))[0]
    rows = []
    settings = [('threshold', t) for t in sorted(args.thresholds)] + \
        [('budget', b) for b in sorted(args.budgets)]
    for kind, value in settings:  # refuse before the first pass, not after it
        sweep_policy(runner.model.backbone, content_gate=args.content_gate, **{kind: value})
    if args.content_gate:
        label += ' + content gate'
    for index, (kind, value) in enumerate(settings):
        rows.append(evaluate(runner, label, content_gate=args.content_gate, **{kind: value}))
        whole = rows[-1]['model_gmacs']
        print(f'[tradeoff] {index + 1}/{len(settings)} {kind} {value:.2f}: '
              f'mIoU {rows[-1]["mIoU"]:.2f}, backbone {rows[-1]["backbone_gmacs"]:.3f} GMACs'
              f'{"" if whole != whole else f", whole model {whole:.3f}"}, fine '
              f'{rows[-1]["fine_fraction"]:.3f}, {rows[-1]["images_per_s"]:.2f} img/s',
              flush=True)
    for config, checkpoint, base_label in args.baseline:
        base = build_runner(config, checkpoint, args.cfg_options, osp.join(args.out_dir, 'runs'))
        rows.append(evaluate(base, base_label))
        print(f'[tradeoff] baseline {base_label}: mIoU {rows[-1]["mIoU"]:.2f}, '
              f'{rows[-1]["backbone_gmacs"]:.3f} GMACs', flush=True)
    with open(osp.join(args.out_dir, 'tradeoff.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(osp.join(args.out_dir, 'tradeoff.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    plot(rows, osp.join(args.out_dir, 'tradeoff.png'))
    print(f'[tradeoff] wrote tradeoff.csv, tradeoff.json, tradeoff.png to {args.out_dir}')
    return rows


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
