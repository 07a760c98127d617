"""Show a transferred gate at work: on the same validation images, the segmentation model with
the transferred gate (before any segmentation training) makes the same fine/coarse decisions as
the classification model it came from.

    python tools/analysis_tools/check_gate_transfer.py CLS_CONFIG CLS_CKPT SEG_CONFIG GATE
        [--num-images 8] [--cfg-options ...  (applied to SEG_CONFIG)]
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.cli import build_eval_model, int_at_least, load_config, tool_parser  # noqa: E402
from mmseg_msvit.models.checkpoints import load_model_weights  # noqa: E402
from mmseg_msvit.models.checkpoints import input_normalisation  # noqa: E402


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('cls_config', help='classification config the gate was trained in')
    parser.add_argument('cls_checkpoint', help='its trained checkpoint')
    parser.add_argument('seg_config', help='segmentation config to move the gate into')
    parser.add_argument('gate', help='gate file written by tools/transfer_gate.py')
    parser.add_argument('--num-images', type=int_at_least(1), default=8,
                        help='validation images to compare (>= 1)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.fine_budget=0.5')
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv=None):
    args = parse_args(argv)
    seg_cfg = load_config(args.seg_config, args.cfg_options)
    seg_model, loader = build_eval_model(seg_cfg, None, ('val_dataloader', ))
    # the gate file, checked against the segmentor's input normalisation
    seg_model.backbone.load_gate(args.gate, input_normalisation(seg_model.data_preprocessor))
    cls_cfg = load_config(args.cls_config)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        from mmpretrain.registry import MODELS
        cls_cfg.model.backbone.init_cfg = None
        cls_cfg.model.pop('head_from_timm', None)
        cls_model = MODELS.build(cls_cfg.model)
    load_model_weights(cls_model, args.cls_checkpoint)  # refuses a gate file, a segmentor
    cls_model.eval()
    seg_fine, cls_fine, same = [], [], True
    for index, batch in enumerate(loader):
        if index >= args.num_images:
            break
        inputs = seg_model.data_preprocessor(batch, False)['inputs']
        seg_mask = seg_model.backbone(inputs)[0].layout.fine_mask
        cls_mask = cls_model.backbone(inputs)[0].layout.fine_mask  # the same normalised pixels
        same = same and torch.equal(seg_mask, cls_mask)
        seg_fine.append(seg_mask.float().mean().item())
        cls_fine.append(cls_mask.float().mean().item())
    if not seg_fine:
        raise RuntimeError('check_gate_transfer: the validation dataloader of '
                           f'{args.seg_config!r} yielded no image')
    seg_mean, cls_mean = sum(seg_fine) / len(seg_fine), sum(cls_fine) / len(cls_fine)
    print(f'[transfer] {len(seg_fine)} segmentation validation images, step 0: fine fraction '
          f'{seg_mean:.3f} with the transferred gate, {cls_mean:.3f} with the classification '
          f"model's gate; decisions {'identical' if same else 'DIFFERENT'}")
    if not same:
        raise SystemExit('check_gate_transfer: the transferred gate decides differently')
    return seg_mean, cls_mean


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
