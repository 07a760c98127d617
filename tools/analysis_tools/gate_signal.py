"""What the task loss says about each region's scale, exactly, and what the gate is trained on.

    python tools/analysis_tools/gate_signal.py CONFIG CHECKPOINT [--num-images 8]
        [--fine-fraction 0.5] [--seed 0] [--cfg-options ...]

For each test image the tool draws random scale decisions (each region fine with probability
--fine-fraction), then for every coarse region:

* the EXACT benefit of fine: the decode head's loss on the image with the region coarse
  minus with the region fine (all other regions unchanged; one forward per region). Compared with
  the labels: is the benefit larger on *detailed* regions (two or more classes inside: boundaries,
  small objects) than on *uniform* ones? (AUC = probability that a random detailed region benefits
  more than a random uniform one; 0.5 = no relation.)
* the straight-through ESTIMATE of that benefit the gate is trained with (minus the gradient of
  the same loss with respect to the region's gate value, tokens scaled by it as in
  :class:`~mmseg_msvit.models.tokenizer.MixedScaleEmbed`), split by the region's current
  state; printed as the correlation and the sign agreement with the exact value.

The loss is the decode head's own (``MSViTEncoderDecoder.task_loss_per_image``).

If the exact benefit follows detail but the estimates do not follow the exact benefit, a gate
trained on them cannot learn to put fine tokens on detail; that is what this tool is for.
Cost: (regions + 2) forward passes per image.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from PIL import Image  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.analysis.gate_alignment import (DETAILED, UNIFORM,  # noqa: E402
                                                  region_detail_kinds)
from mmseg_msvit.cli import build_eval_model, load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Exact per-region benefit of fine tokens vs the gate\'s training signal',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--num-images', type=int, default=8, help='test images to analyse')
    parser.add_argument('--fine-fraction', type=float, default=0.5,
                        help='probability that a region is fine in the random decisions')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.fine_budget=0.5')
    return parser.parse_args(argv)


def auc(positive, negative) -> float:
    """P(a random positive > a random negative), ties counted half; NaN if a set is empty."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if not positive.size or not negative.size:
        return float('nan')
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {args.num_images}')
    if not 0 <= args.fine_fraction <= 1:
        raise ValueError(f'--fine-fraction must lie in [0, 1], got {args.fine_fraction}')
    cfg = load_config(args.config, args.cfg_options)
    model, loader = build_eval_model(cfg, args.checkpoint, ('test_dataloader', ))
    if not hasattr(model, 'task_loss_per_image'):
        raise TypeError(f'gate_signal: the model must be an MSViTEncoderDecoder, got '
                        f'{type(model).__name__}')
    backbone = model.backbone
    ignore_index = getattr(model.decode_head, 'ignore_index', 255)
    region = backbone.coarse_patch_size
    generator = torch.Generator().manual_seed(args.seed)
    rows = []  # (kind, state, exact, straight-through estimate)
    modes = ('scale', )

    for index, batch in enumerate(loader):
        if index >= args.num_images:
            break
        data = model.data_preprocessor(batch, False)
        inputs, samples = data['inputs'], data['data_samples']
        label = samples[0].gt_sem_seg.data[0].to(inputs.device)
        padded, _ = backbone.pad_input(inputs)
        grid = (padded.shape[-2] // region, padded.shape[-1] // region)
        mask = torch.rand((1, *grid), generator=generator) < args.fine_fraction
        with torch.no_grad():
            base = float(model.task_loss_per_image(inputs, samples, mask)[0])
        value = mask.float().to(inputs.device).requires_grad_(True)
        model.task_loss_per_image(inputs, samples, mask, value)[0].backward()
        estimates = [-value.grad[0].cpu().numpy()]
        model.zero_grad(set_to_none=True)
        height, width = inputs.shape[-2:]
        gt = Image.fromarray(label.cpu().numpy().astype(np.uint8))
        kinds = region_detail_kinds(np.asarray(gt.resize((width, height), Image.NEAREST)),
                                    region, ignore_index)
        for r in range(min(grid[0], kinds.shape[0])):
            for c in range(min(grid[1], kinds.shape[1])):
                if kinds[r, c] not in (DETAILED, UNIFORM):
                    continue
                flipped = mask.clone()
                flipped[0, r, c] = ~flipped[0, r, c]
                with torch.no_grad():
                    new = float(model.task_loss_per_image(inputs, samples, flipped)[0])
                state = int(mask[0, r, c])
                exact = (new - base) if state else (base - new)  # loss(coarse) - loss(fine)
                rows.append((kinds[r, c], state, exact, *(e[r, c] for e in estimates)))
    if not rows:
        raise RuntimeError('gate_signal: no labelled region in the images read')
    table = np.asarray(rows, np.float64)
    kind, state, exact = table[:, 0], table[:, 1], table[:, 2]
    detailed, uniform = exact[kind == DETAILED], exact[kind == UNIFORM]
    report = dict(
        regions=len(rows),
        exact_detailed_mean=float(detailed.mean()) if detailed.size else float('nan'),
        exact_uniform_mean=float(uniform.mean()) if uniform.size else float('nan'),
        exact_auc=auc(detailed, uniform),
        exact_positive_detailed=float((detailed > 0).mean()) if detailed.size else float('nan'),
        exact_positive_uniform=float((uniform > 0).mean()) if uniform.size else float('nan'))
    print(f'[signal] {len(rows)} regions of {min(index + 1, args.num_images)} images, random '
          f'decisions (fine with p={args.fine_fraction})')
    print(f'[signal] exact benefit of fine (loss coarse - loss fine): detailed '
          f'{report["exact_detailed_mean"]:+.2e} (>0 for {report["exact_positive_detailed"]:.0%}),'
          f' uniform {report["exact_uniform_mean"]:+.2e} (>0 for '
          f'{report["exact_positive_uniform"]:.0%}); AUC detailed > uniform '
          f'{report["exact_auc"]:.3f}')
    for column, mode in enumerate(modes, start=3):
        parts = []
        for value, name in ((0, 'coarse'), (1, 'fine')):
            chosen = state == value
            estimate, truth = table[chosen, column], exact[chosen]
            if chosen.sum() > 1 and estimate.std() > 0 and truth.std() > 0:
                corr = float(np.corrcoef(estimate, truth)[0, 1])
            else:
                corr = float('nan')
            agree = float((np.sign(estimate) == np.sign(truth)).mean()) if chosen.any() \
                else float('nan')
            report[f'{mode}_{name}_corr'] = corr
            report[f'{mode}_{name}_sign'] = agree
            parts.append(f'{name} regions: corr {corr:+.3f}, same sign {agree:.0%}')
        print(f'[signal] straight-through estimate {mode!r:8}: ' + '; '.join(parts))
    return report


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
