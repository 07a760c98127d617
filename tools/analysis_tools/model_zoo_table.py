"""The README's model-zoo table, measured: parameters and GMACs per image of each config at its
crop size (backbone all fine / all coarse, neck + head, and the whole model at the config's budget).

    python tools/analysis_tools/model_zoo_table.py [CONFIG ...]

Without configs: the recommended (step-2) configs the README lists. Each row is the count
``get_flops.py CONFIG --shape H W`` prints (:func:`mmseg_msvit.analysis.shape_costs`), random
weights (costs and parameter counts do not depend on them); prints a Markdown table. The test suite checks that
the README's table is this output.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

from mmseg_msvit.cli import tool_parser  # noqa: E402

ZOO = ('configs/msvit/msvit-s16-32-distill_upernet_8xb2-40k_ade20k-512x512.py',
       'configs/msvit/msvit-s16-32-distill_upernet_8xb2-20k_cityscapes-512x1024.py',
       'configs/msvit/msvit-s16-32-distill_segmenter-mask_8xb1-40k_ade20k-512x512.py',
       'configs/msvit/msvit-s16-32-distill_segmenter-linear_8xb1-40k_ade20k-512x512.py')
HEADER = ('| config | input | params (M) | backbone GMACs, all fine / all coarse | '
          'neck + head GMACs, dense | whole model GMACs: dense / at the budget |\n'
          '| --- | --- | --- | --- | --- | --- |')


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('configs', nargs='*', default=list(ZOO),
                        help='segmentation configs (default: the recommended ones)')
    return parser.parse_args(argv)


def zoo_row(config: str) -> str:
    """One Markdown row for ``config`` at its crop size."""
    from mmseg_msvit.analysis import parameter_counts, shape_costs
    from mmseg_msvit.cli import build_eval_model, load_config
    cfg = load_config(config)
    shape = tuple(cfg.crop_size)
    model, _ = build_eval_model(cfg, None, loader_names=())
    rows = shape_costs(model, shape)['rows']
    params = parameter_counts(model)['total']
    (fine, dense_head), (coarse, _) = rows['all fine (dense ViT)'], rows['all coarse']
    budget = f'budget {model.backbone.fine_budget}'  # shape_costs' row of the config's budget
    return (f'| `{osp.basename(config)}` | {shape[0]}x{shape[1]} | {params:.2f} | '
            f'{fine / 1e9:.2f} / {coarse / 1e9:.2f} | {dense_head / 1e9:.1f} | '
            f'{(fine + dense_head) / 1e9:.1f} / {sum(rows[budget]) / 1e9:.1f} ({budget}) |')


def main(argv=None):
    args = parse_args(argv)
    rows = [HEADER]
    for index, config in enumerate(args.configs):
        print(f'[zoo] {index + 1}/{len(args.configs)} {config}', file=sys.stderr, flush=True)
        rows.append(zoo_row(config))
    table = '\n'.join(rows)
    print(table)
    return table


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
