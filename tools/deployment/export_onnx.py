"""Export a segmentor (or its MSViT backbone) to ONNX in budget mode and check it.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --shape H W --fine-budget F
        [--out model.onnx] [--backbone-only] [--cfg-options ...]

Budget mode keeps exactly round(F * regions) fine regions per image (the highest gate scores),
so the token count depends on the input size alone and the model has static shapes. The graph
is captured with torch.export and converted by PyTorch's dynamo-based ONNX exporter; the file is
then run by onnxruntime on a random normalised input and compared with eager PyTorch (the max
absolute difference is printed; above --atol the tool fails). Inputs of the ONNX model are
normalised images (B, 3, H, W) as the data preprocessor outputs them (input ``image``); the output
is ``logits`` (the decode head's, at 1/4; at the input size with --full-size), ``labels`` (the
class of every pixel, with --labels) or, with --backbone-only, ``dense_map_i`` of every tap and
``fine_mask``. The file's metadata (onnxruntime: ``get_modelmeta().custom_metadata_map``) holds the
normalisation (mean, std, bgr_to_rgb), the classes, the input size, the budget and what the
output is.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.cli import tool_parser  # noqa: E402
from mmseg_msvit.cli import (build_eval_model, check_output_path, int_at_least,  # noqa: E402
                             load_config, number_in, run_cli)
from mmseg_msvit.deployment import (DenseBackbone, SegmentorLogits, check_budget_mode,  # noqa
                                    export_metadata, export_onnx, max_abs_difference,
                                    onnxruntime_outputs)


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help='segmentation config')
    parser.add_argument('checkpoint', help='its trained checkpoint')
    parser.add_argument('--shape', type=int_at_least(32, ' px (one coarse region)'), nargs=2, required=True,
                        metavar=('H', 'W'), help='input height and width in px (fixed)')
    parser.add_argument('--fine-budget', type=number_in(0, 1, low_open=True), required=True,
                        help='share of regions kept fine in every image, in (0, 1]')
    parser.add_argument('--batch-size', type=int, default=1, help='fixed batch size (default 1)')
    parser.add_argument('--out', default=None,
                        help='ONNX file to write (default: next to the checkpoint, '
                        '<checkpoint>_budget<F>_<H>x<W>.onnx)')
    parser.add_argument('--force', action='store_true',
                        help='replace an existing --out file (never the checkpoint itself)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='export the backbone (dense maps + fine mask), not the segmentor')
    outputs = parser.add_mutually_exclusive_group()
    outputs.add_argument('--full-size', action='store_true',
                         help='logits resized (bilinear) to the input size, not the head\'s 1/4')
    outputs.add_argument('--labels', action='store_true',
                         help='the class index of every pixel at the input size (argmax in the '
                         'graph)')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest accepted |onnxruntime - eager| (default 1e-4)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f'--batch-size must be >= 1, got {args.batch_size}')
    return args


@torch.no_grad()
def main(argv=None):
    args = parse_args(argv)
    out = args.out or (osp.splitext(args.checkpoint)[0] +
                       f'_budget{args.fine_budget:g}_{args.shape[0]}x{args.shape[1]}.onnx')
    check_output_path('export_onnx', args.checkpoint, out, args.force, example='model.onnx')
    cfg = load_config(args.config, args.cfg_options)
    cfg.model.backbone.fine_budget = args.fine_budget
    model, _ = build_eval_model(cfg, args.checkpoint, ())  # no dataset needed
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)
    check_budget_mode(model.backbone)
    module = DenseBackbone(model.backbone) if args.backbone_only else \
        SegmentorLogits(model, full_size=args.full_size, labels=args.labels)
    module.eval()
    height, width = args.shape
    example = torch.randn(args.batch_size, model.backbone.in_channels, height, width,
                          generator=torch.Generator().manual_seed(0))
    print(f'[export] {"backbone" if args.backbone_only else "segmentor"} of {args.config}, '
          f'fine budget {args.fine_budget:g}, input '
          f'{tuple(example.shape)}',
          flush=True)
    if args.backbone_only:
        taps = len(model.backbone.out_indices)
        output_names = [f'dense_map_{i}' for i in range(taps)] + ['fine_mask']
        what = (f'dense_map_0..{taps - 1}: (N, D, H/16, W/16) features of the backbone taps; '
                'fine_mask: (N, H/32, W/32), 1 = region split into fine tokens')
    elif args.labels:
        output_names, what = ['labels'], 'labels: (N, H, W) int64 class index of every pixel'
    else:
        output_names = ['logits']
        what = ('logits: (N, classes, H, W) at the input size' if args.full_size else
                'logits: (N, classes, H/4, W/4) (the decode head\'s output size)')
    metadata = export_metadata(model, cfg, (height, width), args.fine_budget, what)
    eager = module(example)
    measured = {}

    def check(path):  # on the written file, before it replaces --out
        onnx_out = onnxruntime_outputs(path, example)
        if args.labels:  # class indices: the share of pixels that differ (ties may break apart)
            difference = float((eager.cpu().numpy() != onnx_out[0]).mean())
            print(f'[export] onnxruntime vs eager PyTorch: {difference:.2e} of the pixels differ '
                  '(accepted <= 1e-3)')
            if not difference <= 1e-3:
                raise ValueError(f'export check failed: {difference:.2e} of the pixels differ; '
                                 f'{out} not written')
        else:
            difference = max_abs_difference(eager, onnx_out)
            print(f'[export] onnxruntime vs eager PyTorch: max |difference| {difference:.2e} '
                  f'(accepted <= {args.atol:g})')
            if not difference <= args.atol:
                raise ValueError(f'export check failed: max |difference| {difference:.2e} > '
                                 f'--atol {args.atol:g}; {out} not written')
        measured['difference'] = difference

    export_onnx(module, example, out, input_names=['image'], output_names=output_names,
                metadata=metadata, check=check)
    difference = measured['difference']
    print(f'[export] wrote {out}')
    print(f"[export] input 'image', outputs {output_names}; metadata: {sorted(metadata)}")
    return dict(path=out, max_abs_difference=difference)


if __name__ == '__main__':
    run_cli(main)
