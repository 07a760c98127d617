"""GMACs and parameters of a segmentor: on real validation images (the gate decides per image),
or for an input shape without any dataset.

    python tools/analysis_tools/get_flops.py CONFIG [--checkpoint CKPT] [--num-images 20]
        [--shape H [W]] [--cfg-options ...]

On images: the backbone is counted per image from the tokens actually used (gate and pooling
included, every slide window counted); the neck and decode head as they counted what they ran
(``MixedScaleToDense`` + ``MixedScaleUPerHead``: with ``coarse_reduction`` their cost follows
the decisions), other heads once per window shape with mmengine's FlopAnalyzer (mmengine >=
0.7.3; mmseg 1.2.2's own get_flops.py crashes with it), matrix products only. Prints mean / min
/ max per image.

With --shape (as mmseg's get_flops.py; no dataset needed): one forward of that size, reported for
every region fine (the dense ViT), every region coarse and, in budget mode, the budget (exact:
the cost does not depend on the image there), each as backbone, neck + head and whole model; in
threshold mode the cost depends on the image, so use real images. Beside our count it prints what mmengine's FlopAnalyzer (the counter behind
mmseg's get_flops.py) sees in the same dense backbone forward: it has no counter for
``scaled_dot_product_attention``, so it leaves out the attention products, and its figure is
lower; compare like with like. Parameters (total, backbone, gate, neck + heads) are printed too.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import numpy as np  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.analysis import dense_decode_macs, parameter_counts, shape_costs  # noqa: E402
from mmseg_msvit.cli import build_eval_model, int_at_least, load_config, tool_parser  # noqa: E402


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='trained weights (the gate decides per image)')
    parser.add_argument('--num-images', type=int, default=20,
                        help='validation images to count')
    parser.add_argument('--shape', type=int_at_least(32, ' px'), nargs='+', default=None,
                        metavar='H [W]',
                        help='count one input of this size instead of validation images (no '
                        'dataset needed); W defaults to H')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.fine_budget=0.5')
    args = parser.parse_args(argv)
    if args.shape is not None:
        if len(args.shape) > 2:
            parser.error(f'--shape takes H or H W, got {len(args.shape)} numbers')
        args.shape = (args.shape[0], args.shape[-1])
    return args


def print_parameters(model) -> dict:
    params = parameter_counts(model)
    print(f"[flops] parameters: {params['total']:.2f} M (backbone {params['backbone']:.2f} M, of "
          f"which gate {params['gate']:.3f} M; neck + heads {params['neck_and_heads']:.2f} M)")
    return params


def count_shape(model, shape) -> dict:
    """Print and return :func:`mmseg_msvit.analysis.shape_costs` for a ``shape`` input."""
    costs = shape_costs(model, shape)
    rows, padded, grid = costs['rows'], costs['padded'], costs['grid']
    self_counted, mmengine_count = costs['self_counted'], costs['mmengine_dense_backbone']
    backbone = model.backbone
    print(f'[flops] input {shape[0]}x{shape[1]} (padded to {padded[0]}x{padded[1]}), '
          f'{grid[0] * grid[1]} regions')
    dense_total = sum(rows['all fine (dense ViT)'])
    for name, (macs, head) in rows.items():
        print(f'[flops] {name:22s} backbone {macs / 1e9:8.3f}  neck + head {head / 1e9:8.3f}  '
              f'whole model {(macs + head) / 1e9:8.3f} GMACs ({(macs + head) / dense_total:.3f}x '
              'the dense model)')
    if not self_counted:
        print('[flops] the neck + decode head do not count themselves: counted once with '
              'mmengine on the dense maps (the same for every decision)')
    elif getattr(model.neck, 'coarse_reduction', None) is None:
        print('[flops] the neck and head run densely (no coarse_reduction): their cost does not '
              'depend on the decisions')
    if backbone.fine_budget is None and backbone.force_scale is None:
        print('[flops] threshold mode: the gate decides per image, so the cost lies between '
              'all coarse and all fine; count real images (no --shape) for its figures')
    print(f'[flops] mmengine FlopAnalyzer on the same dense backbone forward (what mmseg\'s '
          f'get_flops.py counts): {mmengine_count / 1e9:.3f} GMACs; it has no counter for '
          'scaled_dot_product_attention, hence lower than our '
          f"{rows['all fine (dense ViT)'][0] / 1e9:.3f}")
    return dict(backbone={k: v[0] for k, v in rows.items()},
                decode={k: v[1] for k, v in rows.items()},
                mmengine_dense_backbone=mmengine_count)


def window_shape(model, inputs):
    height, width = inputs.shape[-2:]
    if model.test_cfg.get('mode') == 'slide':
        crop_h, crop_w = model.test_cfg['crop_size']
        return min(crop_h, height), min(crop_w, width)
    return height, width


def decode_macs_for_window(model, shape, cache):
    if shape not in cache:
        cache[shape] = dense_decode_macs(model, shape)
    return cache[shape]


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {args.num_images}')
    cfg = load_config(args.config, args.cfg_options)
    if args.shape is not None:
        model, _ = build_eval_model(cfg, args.checkpoint, loader_names=())
        params = print_parameters(model)
        return dict(params=params, **count_shape(model, args.shape))
    model, loader = build_eval_model(cfg, args.checkpoint, ('val_dataloader', ))
    print_parameters(model)
    if not args.checkpoint:
        print('[flops] no --checkpoint: the gate is untrained (its initial decisions)')
    cache, rows = {}, []
    for index, batch in enumerate(loader):
        if index >= args.num_images:
            break
        data = model.data_preprocessor(batch, False)
        results = model.predict(data['inputs'], data['data_samples'])
        meta = results[0].metainfo
        forwards = meta.get('msvit_forwards', 1)
        head = meta.get('msvit_decode_macs')  # what the neck and head ran, when they count
        if head is None:  # the same for every decision: mmengine, once per window size
            head = forwards * decode_macs_for_window(model, window_shape(model, data['inputs']),
                                                     cache)
        rows.append((meta['msvit_backbone_macs'], head, meta['msvit_fine_fraction']))
        print(f'[flops] image {index + 1}/{args.num_images}: backbone '
              f'{rows[-1][0] / 1e9:.3f} GMACs, fine fraction {rows[-1][2]:.3f}', flush=True)
    if not rows:
        raise RuntimeError('get_flops: the validation dataloader yielded no image')
    values = np.asarray(rows)
    total = values[:, 0] + values[:, 1]
    print(f'\n[flops] {len(rows)} validation images of {args.config}')
    for name, column in (('backbone', values[:, 0]), ('neck + decode head', values[:, 1]),
                         ('whole model', total)):
        print(f'[flops] {name:18s} GMACs/image: mean {column.mean() / 1e9:.3f}  '
              f'min {column.min() / 1e9:.3f}  max {column.max() / 1e9:.3f}')
    print(f'[flops] fine-token fraction: mean {values[:, 2].mean():.3f}')
    return dict(backbone=values[:, 0], decode=values[:, 1], total=total,
                fine_fraction=values[:, 2])


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
