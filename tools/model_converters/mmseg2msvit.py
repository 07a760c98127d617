"""Convert a trained mmseg ViT segmentor (config + checkpoint) into a mixed-scale one, whole:
backbone, neck, decode and auxiliary heads, with the content gate at a budget.

    python tools/model_converters/mmseg2msvit.py MMSEG_CONFIG MMSEG_CKPT OUT_DIR \
        [--fine-budget 0.42] [--mixed-decoding] [--force]

Writes ``OUT_DIR/<config name>_msvit.py`` (a complete config, mmseg's settings kept, the model
converted as :mod:`mmseg_msvit.from_mmseg` says) and ``OUT_DIR/<config name>_msvit.pth`` (every
weight under the converted model's names; the source's ``dataset_meta`` kept). Both are what
``tools/test.py``, ``mmseg.apis.inference_model`` (through
``mmseg_msvit.apis.init_mixed_scale_model``), ``load_from`` and the recipe's teacher take. The
checkpoint is read as data only; the outputs are written atomically and never replace a source
file; existing outputs are replaced only with ``--force``. With ``--fine-budget 1.0`` the
converted model computes what mmseg's did.
"""
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import torch  # noqa: E402

from mmseg_msvit.cli import check_output_path, number_in, tool_parser  # noqa: E402
from mmseg_msvit.engine.fileio import atomic_write, atomic_write_bytes  # noqa: E402


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help="the mmseg config the model was trained with (a file, or "
                        "'mmseg::vit/...py')")
    parser.add_argument('checkpoint', help='its trained checkpoint')
    parser.add_argument('out_dir', help='folder for the converted config and checkpoint')
    parser.add_argument('--fine-budget', type=number_in(0, 1, low_open=True), default=0.42,
                        help='share of 32 px regions the content gate keeps fine (1.0: every '
                        "region fine, mmseg's model exactly)")
    parser.add_argument('--mixed-decoding', action='store_true',
                        help="also run a MultiLevelNeck's finer levels and the UPerHead at half "
                        'resolution on coarse regions (costs accuracy until fine-tuned for it)')
    parser.add_argument('--force', action='store_true', help='replace existing outputs')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmseg_msvit.from_mmseg import convert_mmseg_model
    name = osp.splitext(osp.basename(args.config.split('::')[-1]))[0] + '_msvit'
    cfg_out = osp.join(args.out_dir, name + '.py')
    ckpt_out = osp.join(args.out_dir, name + '.pth')
    for out in (cfg_out, ckpt_out):
        for source in (args.config, args.checkpoint):
            check_output_path('mmseg2msvit', source, out, args.force)
    cfg, converted = convert_mmseg_model(args.config, args.checkpoint, args.fine_budget,
                                         args.mixed_decoding)
    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write(ckpt_out, lambda f: torch.save(converted, f))
    atomic_write_bytes(cfg_out, cfg.pretty_text.encode())
    state = converted['state_dict']
    print(f'[mmseg2msvit] {args.config} + {args.checkpoint} -> {cfg_out}, {ckpt_out}: '
          f'{len(state)} tensors; backbone MSViT (content gate, fine budget '
          f'{args.fine_budget:g}), neck {cfg.model.neck.type}, decode head '
          f'{cfg.model.decode_head.type}'
          + (f', auxiliary head {cfg.model.auxiliary_head.type}'
             if cfg.model.get('auxiliary_head') else '')
          + ('; mixed-scale decoding' if args.mixed_decoding else ''))
    print(f'[mmseg2msvit] evaluate: python tools/test.py {cfg_out} {ckpt_out}')
    return cfg_out, ckpt_out


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
