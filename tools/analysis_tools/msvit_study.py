"""The evidence study: does mixed-scale tokenization beat the simple alternatives at equal GMACs?

    python tools/analysis_tools/msvit_study.py [--setting quick|full] [--seeds 0 1 2]
        [--out-dir work_dirs/study_quick] [--scenes standard|shifted] [--device cpu|cuda]
        [--only RUN ...] [--set KEY=VALUE ...]

Trains and evaluates, for every seed, on synthetic ADE-layout scenes (generated into
OUT_DIR/data; ``--scenes shifted`` draws the same classes differently, a check on scenes the
recipe was not chosen on), with the same data, crops, scale augmentation (0.5-1.25x) and schedule
for every model. What runs by default (``DEFAULT_RUNS`` in mmseg_msvit/analysis/study/runs.py; a
model's evaluations - input scales, budgets, decision rules - in brackets):

* ``dense_pre``: a dense ViT (every region fine) trained from scratch; every other model starts
  from it (as the paper starts from a pretrained ViT) and is fine-tuned for the same number of
  iterations;
* ``dense``: the dense ViT fine-tuned further [input scales = the resolution curve; the
  training-free content gate, random regions and the label oracle at budgets];
* ``learned_gbas``: the paper's recipe (MLP gate, Gumbel-sigmoid straight-through, GBaS annealed
  to the budget) [threshold 0.5, budgets];
* ``gate_only``: ``dense`` frozen, only a gate trained on it (content prior + GBaS + probe, a few
  iterations) [threshold 0.5, budgets];
* ``mixed_content``: ``dense_pre`` fine-tuned on mixed tokens with the task loss alone (content
  gate, budgets 0.25-1.0): what the recipe adds is measured against it [content gate at
  budgets, every region fine];
* ``recipe``: the recommended recipe, ``dense_pre`` fine-tuned on mixed tokens (content gate, a
  budget drawn per batch from 0.25-0.6), coarse tokens with their region's detail (residual
  from the fine patch embeddings) and unpooled to their cells by the neck, distilled from the
  frozen dense model (logits and dense feature maps) [content gate at budgets, label oracle,
  every region fine];
* ``recipe_gate``: ``recipe`` frozen, only a learned gate trained on it, as ``gate_only``.

Every other run (``--only RUN``; the full setting runs more of them) is a baseline or a variant
tried on the way (docs/study.md): ``dense_lowres``, ``coarse``, ``random_gate``,
``content_gate``, ``learned_probe``, ``learned_transfer``, ``learned_content``,
``learned_scratch``, ``gate_only_mlp``, ``gate_only_transfer`` and the ``mixed_*`` /
``recipe_*`` fine-tuning variants (without the coarse-token detail, logit-only distillation,
budgets up to 1.0, mixed-scale decoding, in-place distillation, ...). ``recipe_mixed_head`` is
also evaluated with the gate of a classifier trained on the synthetic ImageNet-layout set (the
``cls`` run, as ``tools/transfer_gate.py`` moves it) at every budget, and
``recipe_mixed_head_gate_transfer`` / ``recipe_mixed_head_gate_mlp`` train that gate further on
the segmentation data / the same gate from scratch there. ``--set head=linear`` or
``--set head=mask`` puts Segmenter's linear or mask-transformer decoder in place of UPerNet.

Resumable: results go to OUT_DIR/results.jsonl as they come, finished trainings are kept, and a
re-run does only what is missing (``--only`` limits it to some runs and what they start from).
At the end it writes summary.csv, summary.json, summary.md (table + comparisons at equal GMACs,
paired by seed) and study.png (mIoU against backbone and whole-model GMACs with the seed spread).
"""
import os
import os.path as osp
import re
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

# the study is mmseg_msvit.analysis.study (registry, configs, evaluator, orchestration, report);
# this file is its command line
from mmseg_msvit.cli import tool_parser  # noqa: E402
from mmseg_msvit.analysis.study.orchestration import Study, train_one  # noqa: E402
from mmseg_msvit.analysis.study.report import write_outputs  # noqa: E402
from mmseg_msvit.analysis.study.runs import SETTINGS, with_overrides  # noqa: E402


def default_out_name(args) -> str:
    """study_SETTING, with the scenes and each --set KEY=VALUE appended when given: runs with
    other values never reuse (or refuse) another run's trainings."""
    parts = [f'study_{args.setting}']
    if args.scenes != 'standard':
        parts.append(args.scenes)
    for pair in args.set:
        key, _, value = pair.partition('=')
        parts.append(f"{key}-{re.sub(r'[^A-Za-z0-9._+-]+', '-', value).strip('-')}")
    return '_'.join(parts)


def parse_args(argv=None):
    from mmseg_msvit.cli import int_at_least
    parser = tool_parser(__doc__)
    parser.add_argument('--setting', choices=sorted(SETTINGS), default='quick',
                        help='quick: MSViT-Ti at 256 px, about 70 min on 2 CPU cores; full: '
                        'MSViT-S at 512 px, longer schedule, for a GPU; smoke: a few '
                        'iterations (checks that every step runs, no result)')
    parser.add_argument('--seeds', type=int_at_least(0), nargs='+', default=[0, 1, 2],
                        help='training seeds (every model is trained once per seed)')
    parser.add_argument('--out-dir', default=None,
                        help='results, checkpoints and data (default work_dirs/study_SETTING, '
                        'plus _shifted and each --set KEY-VALUE when given)')
    parser.add_argument('--scenes', choices=['standard', 'shifted'], default='standard',
                        help='the synthetic scenes as the project draws them, or drawn '
                        'differently (other palette, gravel floors, diagonal stripes, tilted '
                        'poles: a check on scenes the recipe was not chosen on)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu',
                        help='where training and evaluation run')
    parser.add_argument('--only', nargs='+', default=None, metavar='RUN',
                        help='do only these runs (and dense_pre where they start from it)')
    parser.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override values of the chosen --setting (Python literals), e.g. '
                        '--set pre_iters=600 budget=0.5; use a fresh --out-dir for other values')
    parser.add_argument('--report-only', action='store_true',
                        help='only rewrite the summary and plot from results.jsonl')
    parser.add_argument('--train', default=None, metavar='RUN',
                        help='internal: train one run in this process (used by the study)')
    parser.add_argument('--seed', type=int_at_least(0), default=0,
                        help='internal: the seed of --train')
    args = parser.parse_args(argv)
    try:  # the setting with its overrides, made once (SETTINGS itself stays as it is)
        args.setting_values = with_overrides(SETTINGS[args.setting], args.set)
    except ValueError as err:
        parser.error(str(err))
    if args.out_dir is None:
        args.out_dir = osp.join('work_dirs', default_out_name(args))
    if args.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            parser.error('--device cuda: no CUDA device is available here; use --device cpu')
    return args


def main(argv=None):
    args = parse_args(argv)
    args.out_dir = osp.abspath(args.out_dir)
    if args.train:
        return train_one(args.setting_values, args.train, args.seed, args.out_dir)
    import warnings
    warnings.simplefilter('ignore')  # library deprecation notes would bury the progress lines
    import mmseg_msvit  # noqa: F401
    os.makedirs(args.out_dir, exist_ok=True)
    study = Study(args)
    if args.report_only:
        if not study.records:
            raise FileNotFoundError(f'msvit_study: no results in {study.results_path} yet')
        return write_outputs(study.records, study.setting, args.out_dir)
    return study.execute()


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
