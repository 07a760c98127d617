"""The evidence study: does mixed-scale tokenization beat the simple alternatives at equal GMACs?

    python tools/analysis_tools/msvit_study.py [--setting quick|full] [--seeds 0 1 2]
        [--out-dir work_dirs/study_quick] [--scenes standard|shifted] [--device cpu|cuda]
        [--only RUN ...] [--set KEY=VALUE ...]

Trains and evaluates, for every seed, on synthetic ADE-layout scenes (generated into
OUT_DIR/data; ``--scenes shifted`` draws the same classes differently, a check on scenes the
recipe was not chosen on), with the same data, crops, scale augmentation (0.5-1.25x) and schedule
for every model. What runs by default (:data:`DEFAULT_RUNS`; a model's evaluations - input
scales, budgets, decision rules - in brackets):

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
budgets up to 1.0, ...).

Resumable: results go to OUT_DIR/results.jsonl as they come, finished trainings are kept, and a
re-run does only what is missing (``--only`` limits it to some runs and what they start from).
At the end it writes summary.csv, summary.json, summary.md (table + comparisons at equal GMACs,
paired by seed) and study.png (mIoU against backbone and whole-model GMACs with the seed spread).
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

from mmseg_msvit.analysis.study.runs import (  # noqa: E402,F401  (DEFAULT_RUNS: the docstring's)
    DEFAULT_RUNS, REPO, SETTINGS, SMALL_CLASSES, final_checkpoint, gate_file, resolve_setting,
    run_dir, runs, with_overrides)
from mmseg_msvit.analysis.study.configs import cls_config, seg_config  # noqa: E402
from mmseg_msvit.analysis.study.report import write_outputs  # noqa: E402


def train_one(setting, run: str, seed: int, out_dir: str) -> None:
    """Child process: train one run (``--train``)."""
    import mmseg_msvit  # noqa: F401
    from mmengine.runner import Runner

    from mmseg_msvit.cli import ensure_runtime_hooks
    cfg = cls_config(setting, seed, out_dir) if run == 'cls' else \
        seg_config(setting, run, seed, out_dir)
    ensure_runtime_hooks(cfg)
    Runner.from_cfg(cfg).train()


# ---------------------------------------------------------------------------------- the study
class Study:

    def __init__(self, args):
        self.args = args
        self.setting = with_overrides(SETTINGS[args.setting], args.set)
        self.runs = runs(self.setting)
        self.out_dir = args.out_dir
        self.results_path = osp.join(self.out_dir, 'results.jsonl')
        self.records = []
        if osp.exists(self.results_path):
            from mmseg_msvit.analysis.study import read_results
            self.records = read_results(self.results_path)
        self.done = {(r['seed'], r['run'], r['eval']) for r in self.records}
        self.evaluator = None

    # -- plan
    def selected_runs(self):
        names = [name for name in self.runs if name in self.setting['default_runs']]
        if self.args.only:
            names = list(self.runs)
            unknown = sorted(set(self.args.only) - set(names))
            if unknown:
                raise ValueError(f'msvit_study: --only {unknown}: no such run; runs are {names}')
            needed, queue = set(), list(self.args.only)
            while queue:  # a run needs the run it starts from
                name = queue.pop()
                needed.add(name)
                start = self.runs[name]['start']
                if start != 'scratch' and start not in needed:
                    queue.append(start)
            names = [n for n in names if n in needed]
        return names

    def plan(self):
        """[(kind, seed, run, eval_name, eval_kwargs, weight)] of what is still to do."""
        steps = []
        for seed in self.args.seeds:
            for run in self.selected_runs():
                spec = self.runs[run]
                if spec.get('gate_init') and not osp.exists(gate_file(self.out_dir, seed)):
                    steps.append(('cls', seed, 'cls', None, None, self.setting['cls_iters'] * 0.4
                                  + 15))
                if not self.trained(seed, run):
                    iters = spec.get('iters', self.setting['fine_iters'])
                    # the gate probe's extra forwards about double an iteration
                    factor = 2.0 if 'gate_probe' not in spec and \
                        spec.get('force_scale') is None else 1.0
                    steps.append(('train', seed, run, None, None, iters * 0.45 * factor + 15))
                for name, kwargs in spec['evals']:
                    if (seed, run, name) not in self.done:
                        steps.append(('eval', seed, run, name, kwargs, 4.0))
        return steps

    def trained(self, seed, run):
        return osp.exists(final_checkpoint(self.out_dir, seed, run, self.setting)) and \
            osp.exists(osp.join(run_dir(self.out_dir, seed, run), 'train_time.json'))

    # -- steps
    def train(self, seed, run):
        command = [sys.executable, osp.abspath(__file__), '--setting', self.args.setting,
                   '--out-dir', self.out_dir, '--train', run, '--seed', str(seed)]
        if self.args.set:
            command += ['--set', *self.args.set]
        env = dict(os.environ)
        if self.args.device == 'cpu':
            env['CUDA_VISIBLE_DEVICES'] = ''
        os.makedirs(run_dir(self.out_dir, seed, run), exist_ok=True)
        log_path = osp.join(run_dir(self.out_dir, seed, run), 'train_stdout.log')
        start = time.time()
        with open(log_path, 'a') as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO)
        if code != 0:
            raise RuntimeError(f'msvit_study: training {run!r} (seed {seed}) failed with exit '
                               f'code {code}; see {log_path}')
        # the training time of every resumed part (TrainingTimeHook), not only this one
        from mmseg_msvit.models.checkpoints import read_checkpoint
        final = read_checkpoint(final_checkpoint(self.out_dir, seed, run, self.setting))
        seconds = float(final.get('meta', {}).get('train_seconds', time.time() - start))
        with open(osp.join(run_dir(self.out_dir, seed, run), 'train_time.json'), 'w') as f:
            json.dump(dict(seconds=seconds, this_attempt=time.time() - start), f)
        if run == 'cls':
            from mmseg_msvit.models.checkpoints import extract_gate, save_gate
            save_gate(extract_gate(final_checkpoint(self.out_dir, seed, 'cls', self.setting)),
                      gate_file(self.out_dir, seed))

    def evaluate(self, seed, run, name, kwargs):
        from mmseg_msvit.analysis.study import StudyEvaluator
        from mmseg_msvit.cli import build_eval_model
        cfg = seg_config(self.setting, run, seed, self.out_dir)
        cfg.model.backbone.gate_init = None
        if self.evaluator is None:
            from mmseg_msvit.datasets.synthetic import SCENE_CLASSES
            size = self.setting['data']['img_size']
            self.evaluator = StudyEvaluator(cfg.test_dataloader.dataset.to_dict(), (size, size),
                                            SCENE_CLASSES, SMALL_CLASSES, self.args.device)
        kwargs = dict(kwargs)
        decode = kwargs.pop('decode', None)  # neck options of this evaluation (same weights)
        if decode:
            cfg.model.neck.update(decode)
        key = (seed, run, tuple(sorted((decode or {}).items())))
        if getattr(self, '_model_key', None) != key:
            self._model, _ = build_eval_model(
                cfg, final_checkpoint(self.out_dir, seed, run, self.setting), loader_names=())
            self._model.to(self.args.device)
            self._model_key = key
        kwargs.setdefault('rule', 'forced')
        result = self.evaluator.evaluate(self._model, seed=seed, **kwargs)
        with open(osp.join(run_dir(self.out_dir, seed, run), 'train_time.json')) as f:
            train_seconds = json.load(f)['seconds']
        if decode:
            kwargs['decode'] = decode
        record = dict(seed=seed, run=run, eval=name, label=f"{self.runs[run]['label']}, {name}",
                      setting=self.args.setting, **kwargs,
                      train_seconds=train_seconds, **result)
        self.records.append(record)
        self.done.add((seed, run, name))
        with open(self.results_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
            f.flush()
            os.fsync(f.fileno())
        return record

    def execute(self):
        prepare_data(self.setting, self.out_dir, self.args.scenes)
        steps = self.plan()
        total = sum(step[-1] for step in steps)
        done_weight, start = 0.0, time.time()
        print(f'[study] {self.args.setting}: {len(steps)} steps to do for seeds '
              f'{self.args.seeds} ({len(self.done)} results already in {self.results_path})',
              flush=True)
        for index, (kind, seed, run, name, kwargs, weight) in enumerate(steps):
            step_start = time.time()
            if kind in ('cls', 'train'):
                if not self.trained(seed, run) and not (kind == 'cls' and osp.exists(
                        gate_file(self.out_dir, seed))):
                    self.train(seed, run)
                what = f'trained {run}'
            else:
                record = self.evaluate(seed, run, name, kwargs)
                what = (f"{run} {name}: mIoU {record['mIoU']:.2f} (small "
                        f"{record['small_mIoU']:.2f}), {record['gmacs']:.3f} GMACs, fine "
                        f"{record['fine_fraction']:.2f}")
            done_weight += weight
            elapsed = time.time() - start
            eta = elapsed / done_weight * (total - done_weight)
            print(f'[study] {index + 1}/{len(steps)} seed {seed} {what} '
                  f'({time.time() - step_start:.0f} s; elapsed {elapsed / 60:.1f} min, '
                  f'ETA {eta / 60:.1f} min)', flush=True)
        write_outputs(self.records, self.setting, self.out_dir)


def prepare_data(setting, out_dir, scenes='standard'):
    from mmseg_msvit.datasets.synthetic import make_synthetic
    setting = resolve_setting(setting)
    for kind, layout, spec in (('seg', 'ade20k', setting['data']),
                               ('cls', 'imagenet', setting['cls_data'])):
        root = osp.join(out_dir, 'data', kind)
        marker = osp.join(root, '.complete')
        style = scenes if kind == 'seg' else 'standard'
        if osp.exists(marker):
            with open(marker) as f:
                written = f.read().strip() or 'standard'
            if written != style:
                raise ValueError(f'msvit_study: {root} holds {written} scenes, this run asks '
                                 f'for --scenes {style}; use another --out-dir')
            continue
        print(f'[study] writing the synthetic {layout} data ({style}) to {root}', flush=True)
        make_synthetic(root, layout=layout, num_train=spec['num_train'],
                       num_val=spec['num_val'], img_size=(spec['img_size'], spec['img_size']),
                       style=style)
        with open(marker, 'w') as f:
            f.write(style)



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
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    try:  # checked here; applied where the setting is used (SETTINGS itself stays as it is)
        with_overrides(SETTINGS[args.setting], args.set)
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
        return train_one(with_overrides(SETTINGS[args.setting], args.set), args.train,
                         args.seed, args.out_dir)
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
