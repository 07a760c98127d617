"""Speed of the MSViT backbone against its dense baseline, measured side by side in one run.

    python tools/analysis_tools/benchmark_speed.py [--arch small] [--sizes 224 512]
        [--fractions 0.25 0.5 0.75] [--batch-sizes 1 8] [--mode infer train] [--device cpu]
        [--repeats 20] [--warmup 5] [--threads N]

For every (size, batch) the backbone runs densely (every region fine) and with a fixed random
fine mask of each fraction, alternating within every repeat. Prints median latency, images/s, the
measured speedup, the ideal MAC ratio (dense MACs / mixed MACs, from the tokens used, gate
excluded when the mask is fixed) and their quotient, and peak memory (CUDA) or max RSS (CPU).
"""
import argparse
import os.path as osp
import resource
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import torch  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.analysis import backbone_macs  # noqa: E402
from mmseg_msvit.models import MSViT  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--arch', default='small', help='MSViT arch: tiny, small, base, large')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512],
                        help='square input sizes in px')
    parser.add_argument('--fractions', type=float, nargs='+', default=[0.25, 0.5, 0.75],
                        help='shares of regions kept fine (fixed random masks)')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8],
                        help='batch sizes to time')
    parser.add_argument('--mode', nargs='+', choices=['infer', 'train'], default=['infer'],
                        help='inference forward and/or training step (forward + backward)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--repeats', type=int, default=20,
                        help='timed repeats per setting (median reported)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed repeats first')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    args = parser.parse_args(argv)
    for fraction in args.fractions:
        if not 0.0 <= fraction <= 1.0:  # NaN fails too
            parser.error(f'--fractions: {fraction} is not in [0, 1]')
    for size in args.sizes:
        if size < 32:
            parser.error(f'--sizes: {size} px is too small; sizes must be >= 32 (one coarse '
                         'region)')
    for batch in args.batch_sizes:
        if batch < 1:
            parser.error(f'--batch-sizes: {batch} is not a batch size; must be >= 1')
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    if args.warmup < 0:
        parser.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    return args


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_step(model, img, fine_mask, mode):
    if mode == 'infer':
        with torch.no_grad():
            model(img, fine_mask=fine_mask)
    else:
        outs = model(img, fine_mask=fine_mask)
        sum(f.tokens.float().mean() for f in outs).backward()


def time_interleaved(model, img, masks, mode, repeats, warmup):
    """Median seconds per step for each mask, the masks alternating within every repeat so that
    a slow period of the machine hits all of them alike."""
    device = img.device
    times = [[] for _ in masks]
    for index in range(warmup + repeats):
        for slot, mask in enumerate(masks):
            _sync(device)
            start = time.perf_counter()
            run_step(model, img, mask, mode)
            _sync(device)
            if index >= warmup:
                times[slot].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def peak_memory_mb(device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = MSViT(arch=args.arch).to(device)
    print(f'# MSViT-{args.arch} backbone vs dense on {device} '
          f'({torch.get_num_threads()} CPU threads), median of {args.repeats} after '
          f'{args.warmup} warm-up runs')
    print('mode   size batch fine   dense_ms mixed_ms  dense_img/s mixed_img/s  speedup '
          'ideal_mac_ratio quotient peak_mem_MB')
    rows = []
    for mode in args.mode:
        model.train(mode == 'train')
        for size in args.sizes:
            for batch in args.batch_sizes:
                img = torch.randn(batch, 3, size, size, device=device)
                # decisions are per region of the input padded to a multiple of the coarse size
                grid = (-(-size // model.coarse_patch_size), ) * 2
                dense_mask = torch.ones(batch, *grid, dtype=torch.bool, device=device)
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats(device)
                masks = [dense_mask]
                for fraction in args.fractions:
                    generator = torch.Generator().manual_seed(args.seed)
                    scores = torch.rand(batch, *grid, generator=generator).flatten(1)
                    ranks = scores.argsort(1).argsort(1)
                    count = round(fraction * scores.shape[1])
                    masks.append((ranks < count).reshape(batch, *grid).to(device))
                seconds = time_interleaved(model, img, masks, mode, args.repeats, args.warmup)
                macs = [float(backbone_macs(model.eval(), img, m).sum()) for m in masks]
                model.train(mode == 'train')
                for fraction, mixed_s, mixed_macs in zip(args.fractions, seconds[1:], macs[1:]):
                    speedup = seconds[0] / mixed_s
                    ideal = macs[0] / mixed_macs
                    row = (mode, size, batch, fraction, seconds[0] * 1e3, mixed_s * 1e3,
                           batch / seconds[0], batch / mixed_s, speedup, ideal, speedup / ideal,
                           peak_memory_mb(device))
                    rows.append(row)
                    print('{:6s} {:4d} {:5d} {:4.2f} {:10.1f} {:8.1f} {:12.1f} {:11.1f} '
                          '{:8.2f} {:15.2f} {:8.2f} {:11.0f}'.format(*row), flush=True)
    return rows


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
