"""Speed of the whole segmentor (backbone, neck and decode head) as users run it, side by side.

    python tools/analysis_tools/benchmark_model_speed.py [CONFIG] [--size 512]
        [--batch-sizes 1 8] [--budget 0.42] [--reduction 2] [--scales 0.75]
        [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--repeats 5] [--warmup 1] [--out-dir DIR]

One model (the config's, random weights: time does not depend on them) runs the same synthetic
validation scenes in every way a user could spend fewer GMACs, all timed in one interleaved loop
(each repeat runs every row once, so a slow period of the machine hits all rows alike):

* ``dense``: every region fine, the neck and head dense (the dense model);
* ``tokens``: the budget's regions fine (content gate), the neck and head dense (mixed-scale
  tokens in the backbone only: the recipe without mixed-scale decoding);
* ``mixed``: the same decisions, the neck and head at ``1/reduction`` resolution on coarse regions
  (``coarse_reduction``: mixed-scale decoding);
* ``half_head``: every region fine, the neck and head at ``1/reduction`` resolution everywhere
  (the cheaper-head alternative);
* ``scaleS``: the dense model on the input downscaled by S.

Per row: median latency (min-max), images/s, speedup over dense, the whole-model MAC ratio
(dense MACs / this row's, as the model counts what ran), their quotient (1.0: time falls exactly
with the MACs), the backbone's and the neck + head's share of the MACs, and the part of the time
spent in the backbone (timed alone in the same loop). ``--out-dir`` also writes CSV and JSON.
"""
import copy
import csv
import json
import os
import os.path as osp
import statistics
import sys
import time
from contextlib import nullcontext

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.cli import tool_parser  # noqa: E402

DEFAULT_CONFIG = 'configs/msvit/msvit-s16-32-distill_upernet_8xb2-40k_ade20k-512x512.py'
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
WIDE_SPREAD = 1.3


def parse_args(argv=None):
    from mmseg_msvit.cli import int_at_least
    cuda = torch.cuda.is_available()
    parser = tool_parser(__doc__)
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG,
                        help='segmentation config (its model, random weights)')
    parser.add_argument('--size', type=int_at_least(32, ' px'), default=512,
                        help='square input size in px')
    parser.add_argument('--batch-sizes', type=int_at_least(1), nargs='+', default=[1, 8],
                        help='batch sizes to time (every row of one batch size interleaved)')
    parser.add_argument('--budget', type=float, default=0.42,
                        help='share of regions fine in the tokens and mixed rows')
    parser.add_argument('--reduction', type=int, choices=[2, 4], default=2,
                        help='coarse_reduction of the mixed and half_head rows')
    parser.add_argument('--scales', type=float, nargs='*', default=[0.75],
                        help='input scales of the downscaled dense rows')
    parser.add_argument('--device', default='cuda' if cuda else 'cpu',
                        help='cpu or cuda (cuda when available)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32',
                        help='fp32, or autocast to bf16 / fp16')
    parser.add_argument('--repeats', type=int_at_least(1), default=5,
                        help='timed repeats (median reported)')
    parser.add_argument('--warmup', type=int_at_least(0), default=1, help='untimed repeats first')
    parser.add_argument('--threads', type=int_at_least(1), default=None,
                        help='torch CPU threads')
    parser.add_argument('--seed', type=int_at_least(0), default=0,
                        help='seed of the weights and of the synthetic scenes')
    parser.add_argument('--out-dir', default=None, help='also write speed.csv and speed.json')
    args = parser.parse_args(argv)
    if not 0.0 < args.budget <= 1.0:  # NaN fails too
        parser.error(f'--budget: {args.budget} is not in (0, 1]')
    for scale in args.scales:
        if not 0.0 < scale <= 1.0 or int(round(args.size * scale)) < 32:
            parser.error(f'--scales: {scale} must be in (0, 1] and keep the input >= 32 px')
    if str(args.device).startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: no CUDA device is available here')
    if args.out_dir is not None:
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as err:
            parser.error(f'--out-dir {args.out_dir!r}: cannot create it ({err.strerror})')
    return args


def build_models(config: str, budget: float, reduction: int, device):
    """The config's segmentor in the three ways of decoding (the same weights): dense neck and
    head, mixed-scale decoding, and the neck and head reduced everywhere."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from mmseg_msvit.cli import load_config
    cfg = load_config(config)
    model_cfg = cfg.model
    model_cfg.pop('distill', None)  # a training-time teacher: not part of inference
    model_cfg.backbone.update(force_scale=None, gate=dict(type='ContentGate'),
                              fine_budget=budget, train_budget_range=None)
    if model_cfg.neck.get('scales') is None:
        raise ValueError(f'benchmark_model_speed: {config} has no multi-level neck (scales): '
                         'mixed-scale decoding needs one (a UPerNet config)')
    model_cfg.neck.update(coarse_reduction=None, decode_regions='tokens')
    with DefaultScope.overwrite_default_scope('mmseg'):
        dense = MODELS.build(model_cfg)
    dense.init_weights()
    dense = dense.to(device).eval()
    mixed, half_head = copy.deepcopy(dense), copy.deepcopy(dense)
    mixed.neck.coarse_reduction = reduction
    half_head.neck.coarse_reduction = reduction
    half_head.neck.decode_regions = 'coarse'
    return dense, mixed, half_head


def scenes(batch: int, size: int, seed: int, device) -> torch.Tensor:
    """Normalised synthetic validation scenes (the demo's generator)."""
    from mmseg_msvit.datasets.synthetic import scene_batch
    return scene_batch(batch, size, seed).to(device)


def make_step(model, img, policy, dtype, backbone_only=False):
    autocast = torch.autocast(img.device.type, dtype=dtype) if dtype is not None else \
        nullcontext()

    def step():
        with autocast, torch.no_grad():
            if backbone_only:
                return model.backbone(img, policy)
            x, _ = model.extract_feat_and_layout(img, policy)
            return model.decode_head(x)

    return step


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps, repeats, warmup, device):
    """(min, median, max) seconds of each step; every repeat runs all steps once, in turn."""
    times = [[] for _ in steps]
    for index in range(warmup + repeats):
        for slot, step in enumerate(steps):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if index >= warmup:
                times[slot].append(time.perf_counter() - start)
    return [(min(t), statistics.median(t), max(t)) for t in times]


@torch.no_grad()
def model_macs(model, img, policy):
    """(backbone, neck + head) MACs of the batch, as the model counts what ran."""
    x, layout = model.extract_feat_and_layout(img, policy)
    decode = model.decode_macs(layout, x)
    if decode is None:
        raise ValueError('benchmark_model_speed: the neck and head cannot count themselves; use '
                         'MixedScaleToDense with scales and MixedScaleUPerHead')
    return float(model.image_cost(layout)['macs'].sum()), float(decode.sum())


def run_setting(models, batch, args, device):
    from mmseg_msvit.models import ScalePolicy
    dense, mixed, half_head = models
    dtype = DTYPES[args.dtype]
    img = scenes(batch, args.size, args.seed, device)
    fine, own = ScalePolicy.forced('fine'), None  # own: the budget with the content gate
    rows = [('dense', dense, img, fine), ('tokens', dense, img, own),
            ('mixed', mixed, img, own), ('half_head', half_head, img, fine)]
    for scale in args.scales:
        side = int(round(args.size * scale))
        rows.append((f'scale{scale}', dense, F.interpolate(img, size=(side, side),
                                                            mode='bilinear',
                                                            align_corners=False), fine))
    steps = [make_step(model, x, policy, dtype) for _, model, x, policy in rows]
    # the backbone alone, for the time split (one per distinct backbone input and policy)
    steps += [make_step(model, x, policy, dtype, backbone_only=True)
              for _, model, x, policy in rows]
    spreads = time_interleaved(steps, args.repeats, args.warmup, device)
    macs = [model_macs(model, x, policy) for _, model, x, policy in rows]
    dense_total = sum(macs[0])
    out = []
    for slot, (name, _, x, _) in enumerate(rows):
        low, median, high = spreads[slot]
        backbone_time = spreads[len(rows) + slot][1]
        total = sum(macs[slot])
        row = dict(size=args.size, batch=batch, dtype=args.dtype, kind=name,
                   input=int(x.shape[-1]), ms=median * 1e3, ms_min=low * 1e3, ms_max=high * 1e3,
                   spread=high / low, images_per_s=batch / median,
                   speedup=spreads[0][1] / median, mac_ratio=dense_total / total,
                   gmacs=total / batch / 1e9, backbone_gmacs=macs[slot][0] / batch / 1e9,
                   decode_gmacs=macs[slot][1] / batch / 1e9,
                   backbone_time_share=min(1.0, backbone_time / median))
        row['quotient'] = row['speedup'] / row['mac_ratio']
        out.append(row)
    return out


HEADER = ('| size | batch | row | input | ms (min-max) | img/s | speedup | whole-model MAC ratio | '
          'quotient | GMACs/img (backbone + neck/head) | backbone time share |')


def format_row(row) -> str:
    return (f"| {row['size']} | {row['batch']} | {row['kind']} | {row['input']} | "
            f"{row['ms']:.0f} ({row['ms_min']:.0f}-{row['ms_max']:.0f})"
            f"{' !' if row['spread'] > WIDE_SPREAD else ''} | {row['images_per_s']:.2f} | "
            f"{row['speedup']:.2f} | {row['mac_ratio']:.2f} | {row['quotient']:.2f} | "
            f"{row['gmacs']:.1f} ({row['backbone_gmacs']:.1f} + {row['decode_gmacs']:.1f}) | "
            f"{row['backbone_time_share'] * 100:.0f}% |")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    models = build_models(args.config, args.budget, args.reduction, device)
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'cpu, {torch.get_num_threads()} threads'
    print(f'# {osp.basename(args.config)} on {where}, torch {torch.__version__}, {args.dtype}; '
          f'budget {args.budget}, coarse_reduction {args.reduction}; median (min-max) of '
          f'{args.repeats} after {args.warmup} warm-up, every row of a batch size interleaved; '
          f'! = slowest repeat > {WIDE_SPREAD:.1f}x the fastest', flush=True)
    print(HEADER)
    print('| ' + ' | '.join(['---'] * (HEADER.count('|') - 1)) + ' |')
    rows, start = [], time.time()
    for index, batch in enumerate(args.batch_sizes):
        new = run_setting(models, batch, args, device)
        rows += new
        for row in new:
            print(format_row(row), flush=True)
        elapsed = time.time() - start
        print(f'<!-- {index + 1}/{len(args.batch_sizes)} batch sizes, {elapsed:.0f} s, ETA '
              f'{elapsed / (index + 1) * (len(args.batch_sizes) - index - 1):.0f} s -->',
              flush=True)
    wide = [row for row in rows if row['spread'] > WIDE_SPREAD]
    if wide:
        print(f'[speed] warning: {len(wide)} of {len(rows)} rows (marked !) have a slowest repeat '
              f'more than {WIDE_SPREAD:.1f}x their fastest: the machine was not quiet; rerun '
              'with more --repeats on an idle machine', flush=True)
    if args.out_dir:
        with open(osp.join(args.out_dir, 'speed.csv'), 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with open(osp.join(args.out_dir, 'speed.json'), 'w') as f:
            json.dump(dict(device=where, torch=torch.__version__, config=args.config,
                           budget=args.budget, reduction=args.reduction, rows=rows), f, indent=1)
        print(f'[speed] wrote speed.csv and speed.json to {args.out_dir}')
    return rows


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
