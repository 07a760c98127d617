"""GMACs of a segmentor measured on real validation images (the gate decides per image).

    python tools/analysis_tools/get_flops.py CONFIG [--checkpoint CKPT] [--num-images 20]
        [--cfg-options ...]

The backbone is counted per image from the tokens actually used (gate and pooling included,
every slide window counted); the neck rescale and decode head, whose cost does not depend on the
gate, are counted once per window shape with mmengine's FlopAnalyzer (mmengine >= 0.7.3; mmseg
1.2.2's own get_flops.py crashes with it). Prints mean / min / max per image.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.analysis import decode_macs  # noqa: E402
from mmseg_msvit.cli import build_eval_model, load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='trained weights (the gate decides per image)')
    parser.add_argument('--num-images', type=int, default=20,
                        help='validation images to count')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.fine_budget=0.5')
    return parser.parse_args(argv)


def window_shape(model, inputs):
    height, width = inputs.shape[-2:]
    if model.test_cfg.get('mode') == 'slide':
        crop_h, crop_w = model.test_cfg['crop_size']
        return min(crop_h, height), min(crop_w, width)
    return height, width


@torch.no_grad()
def decode_macs_for_window(model, shape, cache):
    if shape not in cache:
        dense = [f.to_dense() for f in model.backbone(torch.zeros(1, 3, *shape))]
        cache[shape] = decode_macs(model, dense)
    return cache[shape]


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {args.num_images}')
    cfg = load_config(args.config, args.cfg_options)
    model, loader = build_eval_model(cfg, args.checkpoint, ('val_dataloader', ))
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
