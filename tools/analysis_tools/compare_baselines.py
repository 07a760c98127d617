"""A mixed-scale model against the simple ways of spending fewer GMACs, on the same images.

    python tools/analysis_tools/compare_baselines.py CONFIG CHECKPOINT \
        --dense DENSE_CONFIG DENSE_CHECKPOINT [--budget 0.42] [--scales 0.75 0.875] \
        [--out-dir work_dirs/compare] [--num-images N] [--cfg-options ...]

Evaluates, on the test set of CONFIG (every row sees the same images):

* the dense model (every region fine) at full input size;
* the dense model with the input downscaled by each of ``--scales`` (0.75: the same backbone
  GMACs as budget 0.42; 0.875: about the same whole-model GMACs with a UPerNet head, whose
  full-resolution maps a mixed-scale backbone does not shrink);
* the dense model with the training-free content gate at ``--budget`` (the share of regions kept
  fine; the rest become coarse tokens);
* the model of CONFIG / CHECKPOINT at ``--budget`` with its own gate (a dense CONFIG, whose
  scale is forced, is refused: it has no gate of its own to decide).

For each: mIoU, backbone GMACs per image (gate, pooling and any coarse-token extras included),
whole-model GMACs (plus the neck's multi-level convolutions and the decode head, which with UPerNet are most of
the cost; as they counted what they ran, so a model with mixed-scale decoding pays less there),
both relative to the dense model, and the fine fraction. Every checkpoint must be exactly its
config's model (no missing weights, none the model lacks). Prints a table and writes
compare.csv, compare.json and compare.png (mIoU against whole-model and backbone GMACs).
"""
import csv
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

from mmengine.config import DictAction  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.cli import build_eval_model, load_config, number_in, run_cli, tool_parser  # noqa: E402

FIELDS = ('label', 'mIoU', 'backbone_gmacs', 'model_gmacs', 'backbone_ratio', 'model_ratio',
          'fine_fraction')


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help='config of the mixed-scale model (its test set is used)')
    parser.add_argument('checkpoint', help='its checkpoint')
    parser.add_argument('--dense', nargs=2, required=True, metavar=('CONFIG', 'CHECKPOINT'),
                        help='the dense model (every region fine) the baselines use')
    parser.add_argument('--budget', type=number_in(0, 1, low_open=True), default=0.42,
                        help='share of regions kept fine (model and content-gate rows)')
    parser.add_argument('--scales', type=number_in(0, 1, low_open=True), nargs='+',
                        default=[0.75, 0.875], help='input scales of the downscaled-dense rows')
    parser.add_argument('--num-images', type=int, default=None,
                        help='evaluate only the first N test images (default: all)')
    parser.add_argument('--out-dir', default='work_dirs/compare',
                        help='folder for compare.csv/json/png')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override keys of both configs (e.g. the data root)')
    args = parser.parse_args(argv)
    if args.num_images is not None and args.num_images < 1:
        parser.error(f'--num-images must be >= 1, got {args.num_images}')
    return args


def test_resize_scale(cfg) -> tuple:
    """The ``Resize`` scale of the test pipeline (what input scale 1.0 means)."""
    for step in cfg.test_dataloader.dataset.pipeline:
        if step.get('type') == 'Resize' and step.get('scale') is not None:
            return tuple(step['scale'])
    raise ValueError('compare_baselines: the test pipeline has no Resize with a scale; the '
                     'downscaled row needs one')


def evaluate_rows(args):
    """The four rows (dicts of FIELDS)."""
    from mmseg_msvit.analysis.study import StudyEvaluator
    cfg = load_config(args.config, args.cfg_options)
    dense_cfg = load_config(args.dense[0], args.cfg_options)
    model, loader = build_eval_model(cfg, args.checkpoint, ('test_dataloader', ))
    forced = model.backbone.policy.force_scale
    if forced is not None:
        raise ValueError(f'compare_baselines: {args.config} forces every region {forced} '
                         f'(force_scale={forced!r}), so "this model at budget {args.budget:g}" '
                         'would be decided by a gate it never trained; give the mixed-scale '
                         'model\'s config (the dense model goes to --dense, and its content-gate '
                         'row is already in the table)')
    dense, _ = build_eval_model(dense_cfg, args.dense[1], ())
    dataset = loader.dataset
    dataset_cfg = cfg.test_dataloader.dataset.to_dict()
    if args.num_images is not None:
        dataset_cfg['indices'] = min(args.num_images, len(dataset))
    evaluator = StudyEvaluator(dataset_cfg, test_resize_scale(cfg), dataset.metainfo['classes'])
    budget = args.budget
    plan = [('dense ViT', dense, dict(rule='forced', scale=1.0))] + [
        (f'dense ViT, input downscaled to {scale:g}x', dense, dict(rule='forced', scale=scale))
        for scale in args.scales] + [
        (f'dense ViT + content gate (training-free), budget {budget:g}', dense,
         dict(rule='content', budget=budget)),
        (f'this model, budget {budget:g}', model, dict(rule='gate', budget=budget)),
    ]
    rows = []
    for index, (label, which, kwargs) in enumerate(plan, start=1):
        print(f'[compare] {index}/{len(plan)} {label}', flush=True)
        result = evaluator.evaluate(which, **kwargs)
        rows.append(dict(label=label, mIoU=result['mIoU'], backbone_gmacs=result['gmacs'],
                         model_gmacs=result['model_gmacs'],
                         fine_fraction=result['fine_fraction']))
    for row in rows:
        row['backbone_ratio'] = row['backbone_gmacs'] / rows[0]['backbone_gmacs']
        row['model_ratio'] = row['model_gmacs'] / rows[0]['model_gmacs']
    return rows


def table(rows) -> str:
    lines = ['| model | mIoU | backbone GMACs (x dense) | whole-model GMACs (x dense) | fine |',
             '| --- | --- | --- | --- | --- |']
    for r in rows:
        lines.append(f"| {r['label']} | {r['mIoU']:.2f} | {r['backbone_gmacs']:.3f} "
                     f"({r['backbone_ratio']:.2f}) | {r['model_gmacs']:.3f} "
                     f"({r['model_ratio']:.2f}) | {r['fine_fraction']:.2f} |")
    return '\n'.join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, title in ((axes[0], 'backbone_gmacs', 'backbone GMACs per image'),
                           (axes[1], 'model_gmacs', 'whole-model GMACs per image')):
        for index, row in enumerate(rows):
            ax.plot(row[key], row['mIoU'], 'osvD^<>'[index % 7], markersize=8,
                    label=row['label'])
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('mIoU')
    axes[1].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    rows = evaluate_rows(args)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'compare.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    with open(osp.join(args.out_dir, 'compare.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    plot(rows, osp.join(args.out_dir, 'compare.png'))
    print(table(rows))
    print(f'[compare] wrote compare.csv, compare.json, compare.png to {args.out_dir}')
    return rows


if __name__ == '__main__':
    run_cli(main)
