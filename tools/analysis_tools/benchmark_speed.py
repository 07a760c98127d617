"""Speed of the MSViT backbone as users see it: dense, equal and mixed batches, side by side.

    python tools/analysis_tools/benchmark_speed.py [--arch small] [--sizes 224 512]
        [--batch-sizes 1 8] [--fractions 0.25 0.5] [--spread 0.4]
        [--kinds dense equal spread padded gate] [--dtypes fp32 bf16] [--mode infer train]
        [--device cpu|cuda] [--repeats 5] [--warmup 2] [--out-dir DIR]

For every (mode, dtype, size, batch) the backbone runs on synthetic validation scenes with these
decisions, all timed in one interleaved loop (each repeat runs every batch once, so a slow period
of the machine hits all of them alike):

* ``dense``: every region fine (the plain ViT/16);
* ``equal``: every image keeps the same share ``f`` of its regions fine (random regions);
* ``spread``: the images' shares spread evenly over ``f - spread .. f + spread`` (same mean,
  about the same useful tokens): what a gate does to a batch; packed tokens;
* ``padded``: the same batch with the padded path (``token_packing=False``): the A/B of packing;
* ``gate``: the decisions of a real gate on the scenes (the training-free content gate's scores,
  one threshold for the batch so that its mean fine share is ``f``): per-image shares as a gate
  gives them; packed tokens.

Reported per row: median latency, images/s, speedup over dense, the ideal MAC ratio (dense MACs /
this batch's MACs, from the tokens used; the decisions are given, so the gate is not run or
counted), their quotient, the time relative to the equal batch, peak memory (CUDA: allocated by
torch for that batch; CPU: the process's maximum RSS so far) and, on ``gate`` rows, the share of
the backbone's time spent in the learned gate (``MixedScaleGate``, 3072-256-256-1) plus the
tokenizer (``decide + embed``), from the same loop. ``--out-dir`` also writes CSV and JSON.
"""
import csv
import json
import os
import os.path as osp
import resource
import statistics
import sys
import time
from contextlib import nullcontext

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.cli import tool_parser  # noqa: E402
from mmseg_msvit.analysis import backbone_macs  # noqa: E402
from mmseg_msvit.models import MSViT, ScaleDecision  # noqa: E402

KINDS = ('dense', 'equal', 'spread', 'padded', 'gate')
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_args(argv=None):
    from mmseg_msvit.cli import int_at_least
    cuda = torch.cuda.is_available()
    parser = tool_parser(__doc__)
    parser.add_argument('--arch', default='small', help='MSViT arch: tiny, small, base, large')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512],
                        help='square input sizes in px (>= 32)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=None,
                        help='batch sizes to time (default: 1 8 32 on CUDA, 1 8 on the CPU)')
    parser.add_argument('--fractions', type=float, nargs='+', default=[0.25, 0.5],
                        help='mean share of regions kept fine in each mixed batch')
    parser.add_argument('--spread', type=float, default=0.4,
                        help="'spread' batches: the images' fine shares run evenly from "
                        'fraction - spread to fraction + spread (narrowed to stay in [0, 1], '
                        'so the mean is the fraction)')
    parser.add_argument('--kinds', nargs='+', choices=KINDS, default=list(KINDS),
                        help='which batches to time (see the description); dense is always '
                        'timed (the reference)')
    parser.add_argument('--dtypes', nargs='+', choices=sorted(DTYPES), default=None,
                        help='fp32, or autocast to bf16 / fp16 (default: fp32 bf16 on CUDA, '
                        'fp32 on the CPU)')
    parser.add_argument('--mode', nargs='+', choices=['infer', 'train'], default=['infer'],
                        help='inference forward and/or training step (forward + backward)')
    parser.add_argument('--device', default='cuda' if cuda else 'cpu',
                        help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed repeats per setting (median reported)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed repeats first')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--seed', type=int_at_least(0), default=0, help='random seed')
    parser.add_argument('--out-dir', default=None,
                        help='also write speed.csv and speed.json there')
    args = parser.parse_args(argv)
    for fraction in args.fractions:
        if not 0.0 <= fraction <= 1.0:  # NaN fails too
            parser.error(f'--fractions: {fraction} is not in [0, 1]')
    if not 0.0 <= args.spread <= 1.0:
        parser.error(f'--spread: {args.spread} is not in [0, 1]')
    for size in args.sizes:
        if size < 32:
            parser.error(f'--sizes: {size} px is too small; sizes must be >= 32 (one coarse '
                         'region)')
    import re
    if not re.fullmatch(r'cpu|cuda(:\d+)?', str(args.device)):
        parser.error(f'--device {args.device!r}: expected cpu, cuda or cuda:N')
    on_cuda = str(args.device).startswith('cuda')
    if args.out_dir is not None:  # before minutes of timing, not after
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as err:
            parser.error(f'--out-dir {args.out_dir!r}: cannot create it ({err.strerror})')
        if not os.access(args.out_dir, os.W_OK):
            parser.error(f'--out-dir {args.out_dir!r}: not writable')
    if args.batch_sizes is None:
        args.batch_sizes = [1, 8, 32] if on_cuda else [1, 8]
    for batch in args.batch_sizes:
        if batch < 1:
            parser.error(f'--batch-sizes: {batch} is not a batch size; must be >= 1')
    if args.dtypes is None:
        args.dtypes = ['fp32', 'bf16'] if on_cuda else ['fp32']
    if on_cuda and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: no CUDA device is available here; use '
                     '--device cpu')
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    return args


# ------------------------------------------------------------------------------ inputs
def scenes(batch: int, size: int, seed: int, device) -> torch.Tensor:
    """(batch, 3, size, size) normalised synthetic validation scenes (the demo's generator)."""
    from mmseg_msvit.datasets.synthetic import scene_batch
    return scene_batch(batch, size, seed).to(device)


def random_masks(shares, grid, seed) -> torch.Tensor:
    """(B, Hc, Wc) bool: image b keeps round(shares[b] * regions) random regions fine."""
    generator = torch.Generator().manual_seed(seed)
    regions = grid[0] * grid[1]
    scores = torch.rand(len(shares), regions, generator=generator)
    ranks = scores.argsort(1).argsort(1)
    counts = torch.tensor([round(s * regions) for s in shares])[:, None]
    return (ranks < counts).reshape(len(shares), *grid)


def spread_shares(fraction: float, spread: float, batch: int) -> list:
    """Fine shares evenly spaced around ``fraction`` (half-width ``spread``, narrowed where it
    would leave [0, 1], so the mean stays ``fraction``)."""
    half = min(spread, fraction, 1.0 - fraction)
    if batch == 1:
        return [fraction]
    return [float(s) for s in np.linspace(fraction - half, fraction + half, batch)]


def content_masks(img, fraction, coarse) -> torch.Tensor:
    """The content gate's decisions: one threshold for the whole batch, so that its mean fine
    share is ``fraction`` while each image gets as many fine regions as its content asks for."""
    from mmseg_msvit.models import ContentGate
    with torch.no_grad():
        scores = ContentGate(coarse_patch_size=coarse)(img).float().cpu()  # (B, Hc, Wc)
    flat = scores.flatten()
    keep = round(fraction * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep:
        mask[flat.topk(keep).indices] = True
    return mask.view_as(scores)


# ------------------------------------------------------------------------------ timing
def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_step(model, img, mask, mode, dtype):
    """One forward (infer) or forward + backward (train) with the given decisions."""
    autocast = torch.autocast(img.device.type, dtype=dtype) if dtype is not None else \
        nullcontext()

    def step():
        with autocast:
            if mode == 'infer':
                with torch.no_grad():
                    return model(img, fine_mask=mask)
            outs = model(img, fine_mask=mask)
        sum(f.to_dense().float().mean() for f in outs).backward()

    return step


def make_gate_tokenizer_step(model, img, mask, dtype):
    """The learned gate on the batch plus the tokenizer (decide + embed), no blocks."""
    autocast = torch.autocast(img.device.type, dtype=dtype) if dtype is not None else \
        nullcontext()

    def step():
        with autocast, torch.no_grad():
            padded, out_size = model.pad_input(img)
            model.gate(padded)
            model.embed(padded, ScaleDecision.from_mask(mask, model.tokens_per_fine_region),
                        out_size=out_size)

    return step


#: a step whose slowest repeat exceeds its fastest by more than this is flagged (max / min)
WIDE_SPREAD = 1.3


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


def peak_memory_mb(step, device) -> float:
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_setting(models, mode, dtype_name, size, batch, args, device):
    """Rows of one (mode, dtype, size, batch): dense plus every kind at every fraction."""
    model, padded_model = models
    dtype = DTYPES[dtype_name]
    img = scenes(batch, size, args.seed, device)
    grid = (-(-size // model.coarse_patch_size), ) * 2
    batches = [('dense', None, torch.ones(batch, *grid, dtype=torch.bool))]
    for fraction in args.fractions:
        for kind in args.kinds:
            if kind == 'dense' or (kind == 'padded' and batch == 1):
                continue  # a single image is never padded
            if kind == 'equal':
                mask = random_masks([fraction] * batch, grid, args.seed)
            elif kind in ('spread', 'padded'):
                mask = random_masks(spread_shares(fraction, args.spread, batch), grid,
                                    args.seed)
            else:
                padded_img, _ = model.pad_input(img)
                mask = content_masks(padded_img, fraction, model.coarse_patch_size)
            batches.append((kind, fraction, mask))
    steps = [make_step(padded_model if kind == 'padded' else model, img, mask.to(device), mode,
                       dtype) for kind, _, mask in batches]
    gate_slots = {}
    if mode == 'infer':
        for slot, (kind, fraction, mask) in enumerate(batches):
            if kind == 'gate':
                gate_slots[slot] = len(steps)
                steps.append(make_gate_tokenizer_step(model, img, mask.to(device), dtype))
    model.train(mode == 'train')
    padded_model.train(mode == 'train')
    spreads = time_interleaved(steps, args.repeats, args.warmup, device)
    seconds = [median for _, median, _ in spreads]
    model.eval()
    with torch.no_grad():
        macs = [float(backbone_macs(model, img, mask.to(device)).sum()) for _, _, mask in batches]
    model.train(mode == 'train')
    rows, equal_time = [], {}
    for slot, (kind, fraction, mask) in enumerate(batches):
        if kind == 'equal':
            equal_time[fraction] = seconds[slot]
    for slot, (kind, fraction, mask) in enumerate(batches):
        shares = mask.flatten(1).float().mean(1)
        row = dict(mode=mode, dtype=dtype_name, size=size, batch=batch, kind=kind,
                   fraction=1.0 if fraction is None else fraction,
                   fine_mean=float(shares.mean()), fine_min=float(shares.min()),
                   fine_max=float(shares.max()), ms=seconds[slot] * 1e3,
                   ms_min=spreads[slot][0] * 1e3, ms_max=spreads[slot][2] * 1e3,
                   spread=spreads[slot][2] / spreads[slot][0],
                   images_per_s=batch / seconds[slot], speedup=seconds[0] / seconds[slot],
                   ideal_mac_ratio=macs[0] / macs[slot])
        row['quotient'] = row['speedup'] / row['ideal_mac_ratio']
        row['vs_equal'] = seconds[slot] / equal_time[fraction] if fraction in equal_time \
            else float('nan')
        row['gate_tokenizer_share'] = seconds[gate_slots[slot]] / (
            seconds[slot] + seconds[gate_slots[slot]]) if slot in gate_slots else float('nan')
        row['peak_mem_mb'] = peak_memory_mb(steps[slot], device)
        rows.append(row)
    return rows


HEADER = ('| mode | dtype | size | batch | batch kind | fine (min-max) | ms (min-max) | img/s | '
          'speedup | ideal MAC ratio | quotient | time / equal | gate+tok | peak MB |')


def format_row(row) -> str:
    def opt(value, fmt, unit=''):
        return '-' if value != value else format(value, fmt) + unit  # NaN: not measured

    return (f"| {row['mode']} | {row['dtype']} | {row['size']} | {row['batch']} | {row['kind']} | "
            f"{row['fine_mean']:.2f} ({row['fine_min']:.2f}-{row['fine_max']:.2f}) | "
            f"{row['ms']:.1f} ({row['ms_min']:.1f}-{row['ms_max']:.1f})"
            f"{' !' if row['spread'] > WIDE_SPREAD else ''} | "
            f"{row['images_per_s']:.1f} | {row['speedup']:.2f} | "
            f"{row['ideal_mac_ratio']:.2f} | {row['quotient']:.2f} | "
            f"{opt(row['vs_equal'], '.2f')} | "
            f"{opt(row['gate_tokenizer_share'] * 100, '.1f', '%')} | "
            f"{row['peak_mem_mb']:.0f} |")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = MSViT(arch=args.arch).to(device)
    padded_model = MSViT(arch=args.arch, token_packing=False).to(device)
    padded_model.load_state_dict(model.state_dict())
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'cpu, {torch.get_num_threads()} threads'
    print(f'# MSViT-{args.arch} backbone on {where}, torch {torch.__version__}; median (min-max) '
          f'of {args.repeats} after {args.warmup} warm-up runs, all batches of a setting '
          f'interleaved; ! = slowest repeat > {WIDE_SPREAD:.1f}x the fastest', flush=True)
    settings = [(m, d, s, b) for m in args.mode for d in args.dtypes for s in args.sizes
                for b in args.batch_sizes]
    rows, start = [], time.time()
    print(HEADER)
    print('| ' + ' | '.join(['---'] * (HEADER.count('|') - 1)) + ' |')
    for index, (mode, dtype_name, size, batch) in enumerate(settings):
        new = run_setting((model, padded_model), mode, dtype_name, size, batch, args, device)
        rows += new
        for row in new:
            print(format_row(row), flush=True)
        elapsed = time.time() - start
        eta = elapsed / (index + 1) * (len(settings) - index - 1)
        print(f'<!-- {index + 1}/{len(settings)} settings, {elapsed:.0f} s, ETA {eta:.0f} s -->',
              flush=True)
    wide = [row for row in rows if row['spread'] > WIDE_SPREAD]
    if wide:
        print(f'[speed] warning: {len(wide)} of {len(rows)} rows (marked !) have a slowest repeat '
              f'more than {WIDE_SPREAD:.1f}x their fastest (worst '
              f"{max(r['spread'] for r in wide):.2f}x): the machine was not quiet, or there were "
              'too few repeats; their ratios are not to be trusted - rerun with more --repeats '
              'on an idle machine', flush=True)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        with open(osp.join(args.out_dir, 'speed.csv'), 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with open(osp.join(args.out_dir, 'speed.json'), 'w') as f:
            json.dump(dict(device=where, torch=torch.__version__, arch=args.arch, rows=rows), f,
                      indent=1)
        print(f'[speed] wrote speed.csv and speed.json to {args.out_dir}')
    return rows


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
