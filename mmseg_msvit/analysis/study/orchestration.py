"""The evidence study's orchestration (``tools/analysis_tools/msvit_study.py``).

:class:`Study` plans what is still to do for the chosen runs and seeds, trains each run in a
child process (the tool's ``--train``: :func:`train_one`, a plain mmengine ``Runner``, resumed
from its own last checkpoint when interrupted), evaluates every trained model with
:class:`~mmseg_msvit.analysis.study.StudyEvaluator` and appends each result to
``OUT_DIR/results.jsonl`` as it comes (:func:`read_results` reads it back: a re-run does only
what is missing); at the end it writes the report (:func:`~.report.write_outputs`).
:func:`prepare_data` writes the synthetic scenes the study trains and evaluates on.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import List

from .configs import cls_config, seg_config
from .evaluator import StudyEvaluator
from .report import write_outputs
from .runs import (REPO, SMALL_CLASSES, final_checkpoint, gate_file, resolve_setting, run_dir,
                   runs)

#: the command line whose ``--train`` trains one run in a child process
TOOL = osp.join(REPO, 'tools', 'analysis_tools', 'msvit_study.py')


def read_results(path: str) -> List[dict]:
    """The records of a study's ``results.jsonl`` (one JSON object per line).

    A last line cut short by an interrupted write (no newline, not valid JSON) is dropped and the
    file truncated back to its last complete line, with a note, so that a re-run can append
    again; any other unreadable line is an error naming the file and the line.
    """
    with open(path, 'rb') as f:
        data = f.read()
    records = []
    if data and not data.endswith(b'\n'):
        try:  # a whole record whose newline was not written: complete the line
            json.loads(data.rsplit(b'\n', 1)[-1])
            with open(path, 'ab') as f:
                f.write(b'\n')
            data += b'\n'
        except ValueError:
            pass  # a torn record: dropped below
    lines = data.split(b'\n')
    complete = data.endswith(b'\n') or not data
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as err:
            if number == len(lines) and not complete:  # the torn tail of an interrupted write
                keep = len(data) - len(raw)
                with open(path, 'r+b') as f:
                    f.truncate(keep)
                print(f'[study] {path}: dropped an incomplete last line (an interrupted write; '
                      f'{len(raw)} bytes); its step runs again', flush=True)
                break
            raise ValueError(f'{path}, line {number}: not a JSON record ({err}); fix or remove '
                             'that line') from None
        if not isinstance(record, dict) or not {'seed', 'run', 'eval'} <= set(record):
            raise ValueError(f'{path}, line {number}: not a study record (needs seed, run, '
                             'eval)')
        records.append(record)
    return records


def prepare_data(setting, out_dir, scenes='standard'):
    """The synthetic scenes (OUT_DIR/data/seg; ``scenes``: 'standard' or 'shifted') and
    classification images (OUT_DIR/data/cls) of ``setting``, written once; a folder written
    with other scenes is refused."""
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


def train_one(setting, run: str, seed: int, out_dir: str) -> None:
    """Child process: train one run (``--train``)."""
    import mmseg_msvit  # noqa: F401
    from mmengine.runner import Runner

    from mmseg_msvit.cli import ensure_runtime_hooks
    cfg = cls_config(setting, seed, out_dir) if run == 'cls' else \
        seg_config(setting, run, seed, out_dir)
    ensure_runtime_hooks(cfg)
    Runner.from_cfg(cfg).train()


class Study:
    """A study: what is still to do, the trainings, the evaluations and the report.

    Args:
        args (argparse.Namespace): the tool's options: ``setting_values`` (the setting with its
            ``--set`` overrides, made by the tool's ``parse_args``), ``seeds``, ``out_dir``, ``only`` (runs, or
            None: the setting's ``default_runs``), ``scenes`` and ``device``.
    """

    def __init__(self, args):
        self.args = args
        self.setting = args.setting_values
        self.runs = runs(self.setting)
        self.out_dir = args.out_dir
        self.results_path = osp.join(self.out_dir, 'results.jsonl')
        self.records = []
        if osp.exists(self.results_path):
            self.records = read_results(self.results_path)
        self.done = {(r['seed'], r['run'], r['eval']) for r in self.records}
        self.evaluator = None
        self._model = self._model_key = None  # the model evaluated last (kept between evals)

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
                needs_gate = spec.get('gate_init') or any(
                    kwargs.get('rule') == 'transfer' for _, kwargs in spec['evals'])
                if needs_gate and not osp.exists(gate_file(self.out_dir, seed)) and \
                        not any(step[:2] == ('cls', seed) for step in steps):  # once a seed
                    steps.append(('cls', seed, 'cls', None, None, self.setting['cls_iters'] * 0.4
                                  + 15))
                if not self.trained(seed, run):
                    iters = spec.get('iters', self.setting['fine_iters'])
                    # a rough weight for the estimate: runs with the gate probe count double
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
        command = [sys.executable, TOOL, '--setting', self.args.setting,
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
        if self._model_key != key:
            self._model, _ = build_eval_model(
                cfg, final_checkpoint(self.out_dir, seed, run, self.setting), loader_names=())
            self._model.to(self.args.device)
            self._model_key = key
        kwargs.setdefault('rule', 'forced')
        where = dict(gate_file=gate_file(self.out_dir, seed)) if kwargs['rule'] == 'transfer' \
            else {}
        result = self.evaluator.evaluate(self._model, seed=seed, **kwargs, **where)
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
