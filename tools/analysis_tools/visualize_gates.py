"""Draw the gate's fine/coarse decisions over validation images (PNG per image + an overview).

    python tools/analysis_tools/visualize_gates.py CONFIG CHECKPOINT --out-dir DIR
        [--num-images 8] [--threshold 0.5] [--cfg-options ...]

Each PNG shows, left to right: the image with fine regions tinted (every 16x16 token outlined)
and coarse regions outlined as one 32x32 token; the prediction; the ground truth.

Over the whole test set (or the first --num-eval images) it also prints where the fine tokens
went: the fine fraction on *detailed* regions (the ground truth holds two or more classes: an
object boundary or a small object) against *uniform* ones (one class), see
``mmseg_msvit.analysis.gate_alignment``.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from PIL import Image  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.analysis.gate_alignment import (DetailAlignment,  # noqa: E402
                                                  region_detail_kinds)
from mmseg_msvit.cli import build_eval_model, load_config, number_in  # noqa: E402
from mmseg_msvit.visualization import draw_gate_map  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Draw gate decisions over validation images', formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', required=True, help='folder for the pictures')
    parser.add_argument('--num-images', type=int, default=8, help='pictures to draw')
    parser.add_argument('--num-eval', type=int, default=None,
                        help='images for the detail statistics (default: the whole test set)')
    parser.add_argument('--threshold', type=number_in(0, 1), default=None,
                        help='gate threshold in [0, 1] (default: the config\'s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.fine_budget=0.5')
    return parser.parse_args(argv)


def colourise(label: np.ndarray, palette) -> np.ndarray:
    palette = np.asarray(list(palette) + [[0, 0, 0]] * 256, np.uint8)[:256]
    palette[255] = 0
    return palette[label.astype(np.int64)]


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {args.num_images}')
    if args.num_eval is not None and args.num_eval < 1:
        raise ValueError(f'--num-eval must be >= 1, got {args.num_eval}')
    cfg = load_config(args.config, args.cfg_options)
    model, loader = build_eval_model(cfg, args.checkpoint, ('test_dataloader', ))
    if args.threshold is not None:
        if model.backbone.fine_budget is not None:
            raise ValueError(f'--threshold {args.threshold:g} has no effect: the model is in '
                             f'budget mode (model.backbone.fine_budget='
                             f'{model.backbone.fine_budget:g} keeps that share of regions '
                             'fine); drop --threshold, or add --cfg-options '
                             'model.backbone.fine_budget=None for threshold mode')
        model.backbone.gate_threshold = args.threshold
    palette = loader.dataset.metainfo.get('palette') or []
    os.makedirs(args.out_dir, exist_ok=True)
    panels, fractions = [], []
    alignment = DetailAlignment()
    ignore_index = getattr(loader.dataset, 'ignore_index', 255)
    num_eval = args.num_eval or len(loader.dataset)
    for index, batch in enumerate(loader):
        if index >= max(args.num_images, num_eval):
            break
        with torch.no_grad():
            (result, ) = model.test_step(batch)  # whole or slide, as the config says
            # the gate reads each region alone: its map on the whole image is the decision of
            # every window that contains the region on the same 32 px grid
            inputs = model.data_preprocessor(batch, False)['inputs']
            padded, _ = model.backbone.pad_input(inputs)
            fine_mask = model.backbone.decide_scales(padded)[0][0].cpu().numpy()
        image = batch['inputs'][0].permute(1, 2, 0).numpy()[..., ::-1]  # BGR -> RGB
        overlay = draw_gate_map(image, fine_mask, model.backbone.coarse_patch_size,
                                model.backbone.fine_patch_size)
        height, width = image.shape[:2]
        pred = result.pred_sem_seg.data[0].cpu().numpy()
        pred = np.asarray(Image.fromarray(pred.astype(np.uint8)).resize((width, height),
                                                                          Image.NEAREST))
        gt = result.gt_sem_seg.data[0].cpu().numpy() if 'gt_sem_seg' in result else \
            np.full_like(pred, 255)
        gt = np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((width, height),
                                                                      Image.NEAREST))
        fractions.append(float(fine_mask.mean()))
        if index < num_eval:
            kinds = region_detail_kinds(gt, model.backbone.coarse_patch_size, ignore_index)
            alignment.update(fine_mask[:kinds.shape[0], :kinds.shape[1]], kinds)
        if index >= args.num_images:
            continue
        panel_h = max(overlay.shape[0], height)
        pieces = [overlay, colourise(pred, palette), colourise(gt, palette)]
        pieces = [np.pad(p, ((0, panel_h - p.shape[0]), (0, 4), (0, 0))) for p in pieces]
        panel = np.concatenate(pieces, axis=1)
        name = osp.splitext(osp.basename(result.img_path))[0]
        Image.fromarray(panel).save(osp.join(args.out_dir, f'{name}_gate.png'))
        panels.append(panel)
    if not panels:
        raise RuntimeError('visualize_gates: the test dataloader yielded no image')
    width = max(p.shape[1] for p in panels)
    overview = np.concatenate([np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)))
                               for p in panels], axis=0)
    overview_path = osp.join(args.out_dir, 'gates_overview.png')
    Image.fromarray(overview).save(overview_path)
    stats = alignment.summary()
    print(f'[gates] {len(fractions)} images, mean fine fraction {np.mean(fractions):.3f}; '
          f'fine on detailed regions (boundaries, small objects) {stats["fine_on_detailed"]:.3f} '
          f'of {stats["detailed_regions"]}, on uniform regions {stats["fine_on_uniform"]:.3f} '
          f'of {stats["uniform_regions"]}')
    print(f'[gates] {len(panels)} pictures in {args.out_dir} (overview: {overview_path})')
    return dict(overview=overview_path, **stats)


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
