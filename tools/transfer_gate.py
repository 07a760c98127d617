"""Extract the gate of a trained MSViT (segmentation or classification) into a small checkpoint.

    python tools/transfer_gate.py SRC_CHECKPOINT OUT_GATE.pth [--include-prior]
        [--mean 123.675 116.28 103.53 --std 58.395 57.12 57.375 --bgr-to-rgb]

Load it into another model with ``model.backbone.gate_init=dict(checkpoint='OUT_GATE.pth',
freeze=False)`` (any MSViT width: the gate reads pixels). Patch sizes and the input normalisation
are stored with the gate and checked when it is loaded.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.cli import check_output_path, tool_parser  # noqa: E402
from mmseg_msvit.models.checkpoints import extract_gate, save_gate  # noqa: E402


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('checkpoint', help='segmentation or classification checkpoint')
    parser.add_argument('out', help='gate checkpoint to write')
    parser.add_argument('--include-prior', action='store_true',
                        help='also keep the GBaS prior parameters (mu, tau per position)')
    parser.add_argument('--mean', type=float, nargs='+', help='override the input mean')
    parser.add_argument('--std', type=float, nargs='+', help='override the input std')
    parser.add_argument('--bgr-to-rgb', action='store_true', default=None,
                        help='override: inputs converted BGR -> RGB before normalisation')
    parser.add_argument('--force', action='store_true',
                        help='replace OUT if it exists (never the source checkpoint)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_output_path('transfer_gate', args.checkpoint, args.out, args.force, 'gate.pth')
    gate = extract_gate(args.checkpoint, include_prior=args.include_prior, mean=args.mean,
                        std=args.std, bgr_to_rgb=args.bgr_to_rgb)
    save_gate(gate, args.out)
    meta = gate['meta']
    print(f"[transfer] gate of {args.checkpoint} -> {args.out}: coarse {meta['coarse_patch_size']}"
          f" px, fine {meta['fine_patch_size']} px, hidden {meta['hidden_dims']}, mean "
          f"{meta['mean']}, std {meta['std']}, bgr_to_rgb {meta['bgr_to_rgb']}"
          + (', GBaS prior included' if 'gbas_prior' in gate else ''))
    return gate


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
