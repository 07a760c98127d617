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
import csv
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


def family(run, name):
    """The curve a result belongs to in the plot."""
    if name.startswith('scale_at_'):
        return 'dense ViT, downscaled to equal whole-model GMACs (interpolated)'
    if run == 'dense' and name.startswith('scale'):
        return 'dense ViT, input downscaled'
    if run == 'dense_pre' and name.startswith('scale'):
        return 'starting dense ViT (teacher), input downscaled'
    if run == 'dense_pre' and name.startswith('content'):
        return 'starting dense ViT (teacher) + content gate'
    if name.startswith('oracle'):
        return f'{run} + label oracle'
    if run == 'dense' and name.startswith('content'):
        return 'dense ViT + content gate (training-free)'
    if run == 'dense' and name.startswith('random'):
        return 'dense ViT + random regions'
    if run.startswith(('learned', 'gate_only', 'recipe_gate', 'recipe_mixed_head_gate')) and \
            name.startswith('budget'):
        return f'{run} (budget curve)'
    if run.startswith(('mixed', 'recipe')) and name.startswith('scale'):
        return f'{run}, every region fine'
    if name.startswith('mixed_decode_x4_'):
        return f'{run}, mixed-scale decoding at x4 only (not trained for it)'
    if name.startswith('mixed_decode_'):
        return f'{run}, mixed-scale decoding (not trained for it)'
    if name.startswith('dense_decode_'):
        return f'{run}, decoded densely'
    if run == 'dense_half_head':
        return 'dense ViT, neck and head at 1/2 resolution (fine-tuned)'
    if run == 'recipe':
        return 'recipe, content gate'
    if run == 'recipe_mixed_head':
        return 'recipe + mixed-scale decoding (recommended with UPerNet), content gate'
    if run == 'recipe_mixed_head_x4':
        return 'recipe + mixed-scale decoding at x4 only (x2 dense), content gate'
    return run


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


# ---------------------------------------------------------------------------------- outputs
def comparisons(setting):
    """(label, first, second) pairs the verdicts are about: equal GMACs unless stated."""
    b, low = setting['budget'], setting['low_scale']
    pairs = []
    mixed = ('mixed_content', 'mixed_detail', 'mixed_distill', 'mixed_detail_distill',
             'mixed_detail_distill_feat', 'mixed_detail_unpool_feat', 'recipe_no_detail',
             'recipe_feat3')
    candidates = [('recipe', f'content{b}'), ('recipe_mixed_head', f'content{b}'),
                  ('recipe_gate', f'budget{b}')] + [
        (run, f'budget{b}') for run in (
            'learned_gbas', 'learned_probe', 'learned_transfer', 'learned_content', 'gate_only',
            'gate_only_mlp', 'gate_only_transfer')] + [(run, f'content{b}') for run in mixed]
    for mine in candidates:
        learned = mine[0]
        pairs += [
            (f'{learned} vs dense trained at {low}x', mine, ('dense_lowres', f'scale{low}')),
            (f'{learned} vs dense downscaled to {low}x', mine, ('dense', f'scale{low}')),
            (f'{learned} vs content gate (fine-tuned)', mine, ('content_gate', f'content{b}')),
            (f'{learned} vs content gate (training-free)', mine, ('dense', f'content{b}')),
            (f'{learned} vs random regions (fine-tuned)', mine, ('random_gate', f'random{b}')),
            (f'{learned} vs dense at full GMACs', mine, ('dense', 'scale1.0')),
        ]
    for mine in (('recipe', f'content{b}'), ('recipe_mixed_head', f'content{b}'),
                 ('recipe_gate', f'budget{b}')):
        pairs += [
            (f'{mine[0]} vs dense downscaled to 0.875x (whole-model GMACs about equal)', mine,
             ('dense', 'scale0.875')),
            (f'{mine[0]} vs its starting dense model (the teacher)', mine,
             ('dense_pre', 'scale1.0')),
            (f'{mine[0]} vs its starting dense model downscaled to {low}x', mine,
             ('dense_pre', f'scale{low}')),
            (f'{mine[0]} vs its starting dense model + content gate', mine,
             ('dense_pre', f'content{b}')),
        ]
    mixed_head = ('recipe_mixed_head', f'content{b}')
    pairs += [(f'{run} {name} vs dense downscaled to equal whole-model GMACs (interpolated)',
               (run, name), ('dense', interpolated_eval(run, name)))
              for run, name in equal_cost_targets(setting)]
    pairs += [
        ('recipe_mixed_head vs recipe (its neck and head at full resolution, trained so)',
         mixed_head, ('recipe', f'content{b}')),
        ('recipe_mixed_head vs recipe with mixed-scale decoding only at evaluation',
         mixed_head, ('recipe', f'mixed_decode_content{b}')),
        ('recipe with mixed-scale decoding at evaluation vs recipe',
         ('recipe', f'mixed_decode_content{b}'), ('recipe', f'content{b}')),
        ('recipe with mixed-scale decoding at x4 only vs recipe',
         ('recipe', f'mixed_decode_x4_content{b}'), ('recipe', f'content{b}')),
        ('recipe_mixed_head decoded densely vs recipe (what training with mixed decoding does '
         'to the model)', ('recipe_mixed_head', f'dense_decode_content{b}'),
         ('recipe', f'content{b}')),
        ('recipe_mixed_head vs dense with its neck and head at 1/2 resolution (whole-model '
         'GMACs about equal)', mixed_head, ('dense_half_head', 'scale1.0')),
        ('recipe with mixed-scale decoding at evaluation vs dense with its neck and head at 1/2 '
         'resolution', ('recipe', f'mixed_decode_content{b}'), ('dense_half_head', 'scale1.0')),
        ('recipe_mixed_head_x4 vs recipe (its neck and head at full resolution)',
         ('recipe_mixed_head_x4', f'content{b}'), ('recipe', f'content{b}')),
        ('recipe_mixed_head_x4 vs recipe_mixed_head (x2 level dense vs mixed)',
         ('recipe_mixed_head_x4', f'content{b}'), mixed_head),
        ('recipe_mixed_head_x4 vs dense with its neck and head at 1/2 resolution',
         ('recipe_mixed_head_x4', f'content{b}'), ('dense_half_head', 'scale1.0')),
        ('recipe_mixed_head: label oracle vs content gate, same model',
         ('recipe_mixed_head', f'oracle{b}'), mixed_head),
        ('recipe_mixed_head: learned gate (gate only) vs content gate',
         ('recipe_mixed_head_gate', f'budget{b}'), mixed_head),
        ('recipe_mixed_head + learned gate vs dense downscaled to equal whole-model GMACs '
         '(interpolated)', ('recipe_mixed_head_gate', f'budget{b}'),
         ('dense', interpolated_eval('recipe_mixed_head_gate', f'budget{b}'))),
        ('recipe_mixed_head + learned gate vs dense with its neck and head at 1/2 resolution',
         ('recipe_mixed_head_gate', f'budget{b}'), ('dense_half_head', 'scale1.0')),
    ]
    pairs += [
        (f"dense: {setting['fine_iters']} more dense iterations vs the starting model",
         ('dense', 'scale1.0'), ('dense_pre', 'scale1.0')),
        ('transferred vs scratch gate (gate only)', ('gate_only_transfer', f'budget{b}'),
         ('gate_only_mlp', f'budget{b}')),
        ('transferred vs scratch gate (whole model)', ('learned_transfer', f'budget{b}'),
         ('learned_probe', f'budget{b}')),
        ('dense start vs from scratch (probe)', ('learned_probe', f'budget{b}'),
         ('learned_scratch', f'budget{b}')),
        ('content gate vs dense trained at low res', ('content_gate', f'content{b}'),
         ('dense_lowres', f'scale{low}')),
        ('label oracle vs content gate, both on the dense model', ('dense', f'oracle{b}'),
         ('dense', f'content{b}')),
        ('random-trained model: content vs random decisions', ('random_gate', f'content{b}'),
         ('random_gate', f'random{b}')),
        ('content decisions: fine-tuned on budgets 0.25-1.0 vs dense-only training',
         ('mixed_content', f'content{b}'), ('dense', f'content{b}')),
        ('dense evaluation: fine-tuned on budgets 0.25-1.0 vs dense-only training',
         ('mixed_content', 'scale1.0'), ('dense', 'scale1.0')),
        ('recipe: learned gate vs content gate, same model', ('recipe_gate', f'budget{b}'),
         ('recipe', f'content{b}')),
        ('recipe: label oracle vs content gate, same model', ('recipe', f'oracle{b}'),
         ('recipe', f'content{b}')),
        ('dense evaluation: recipe vs dense-only training', ('recipe', 'scale1.0'),
         ('dense', 'scale1.0')),
    ] + [(f'{run} vs recipe (the ablations)', (run, f'content{b}'), ('recipe', f'content{b}'))
         for run in mixed]
    return pairs


def interpolated_eval(run: str, name: str) -> str:
    """The evaluation name of the dense model downscaled to the whole-model GMACs of ``run``'s
    evaluation ``name``."""
    return f'scale_at_{run}_{name}'


def equal_cost_targets(setting) -> list:
    """(run, eval) pairs the dense model's downscaling is interpolated to (equal whole-model
    GMACs): the recipes at the budget, with and without mixed-scale decoding, and at 0.5."""
    budgets = sorted({setting['budget'], 0.5})
    targets = [('recipe', f"content{setting['budget']}"),
               ('recipe_mixed_head_gate', f"budget{setting['budget']}")]
    for x in budgets:
        targets += [('recipe_mixed_head', f'content{x}'), ('recipe', f'mixed_decode_content{x}'),
                    ('recipe', f'mixed_decode_x4_content{x}'),
                    ('recipe_mixed_head_x4', f'content{x}')]
    return targets


def interpolated_records(records, setting) -> list:
    """Per seed, the dense model downscaled to exactly the whole-model GMACs of each
    :func:`equal_cost_targets` result: its mIoU interpolated linearly in whole-model GMACs
    between the two input scales that bracket them (derived, never written to results.jsonl;
    none where no scales bracket)."""
    derived = []
    for run, name in equal_cost_targets(setting):
        for target in [r for r in records if r['run'] == run and r['eval'] == name]:
            points = sorted(((r['model_gmacs'], r) for r in records
                             if r['run'] == 'dense' and r['seed'] == target['seed'] and
                             r['eval'].startswith('scale') and
                             not r['eval'].startswith('scale_at_') and
                             r.get('model_gmacs') is not None and
                             r['model_gmacs'] == r['model_gmacs']), key=lambda p: p[0])
            want = target.get('model_gmacs')
            if want is None or want != want:
                continue
            pairs = [(lo, hi) for lo, hi in zip(points, points[1:]) if lo[0] <= want <= hi[0]]
            if not pairs:
                continue
            (g0, low), (g1, high) = pairs[0]
            t = 0.0 if g1 == g0 else (want - g0) / (g1 - g0)
            mix = lambda key: low[key] + t * (high[key] - low[key])  # noqa: E731
            derived.append(dict(
                seed=target['seed'], run='dense', eval=interpolated_eval(run, name),
                label=f"dense ViT downscaled to the whole-model GMACs of {run} {name} "
                f"(interpolated between inputs {low['eval'][5:]}x and {high['eval'][5:]}x)",
                mIoU=mix('mIoU'), small_mIoU=mix('small_mIoU'),
                iou={c: low['iou'][c] + t * (high['iou'][c] - low['iou'][c])
                     for c in low['iou']},
                gmacs=mix('gmacs'), gmacs_min=mix('gmacs_min'), gmacs_max=mix('gmacs_max'),
                model_gmacs=want, fine_fraction=1.0, fine_on_detailed=float('nan'),
                fine_on_uniform=float('nan'), train_seconds=low.get('train_seconds')))
    return derived


def fmt(mean, std, digits=2):
    return 'n/a' if mean != mean else f'{mean:.{digits}f} ± {std:.{digits}f}'


def write_outputs(records, setting, out_dir):
    from mmseg_msvit.analysis.study import compare, summarise
    # the plot's curve of each result is derived from its run and evaluation, never stored
    records = records + interpolated_records(records, setting)
    records = [dict(r, family=family(r['run'], r['eval'])) for r in records]
    rows = summarise(records)
    fields = ['run', 'eval', 'label', 'family', 'seeds'] + \
        [k for key in ('mIoU', 'small_mIoU', 'gmacs', 'gmacs_min', 'gmacs_max', 'model_gmacs',
                       'fine_fraction', 'fine_on_detailed', 'fine_on_uniform', 'train_seconds')
         for k in (key, f'{key}_std')]
    classes = list(rows[0]['iou']) if rows else []
    with open(osp.join(out_dir, 'summary.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(fields + [f'IoU {c}' for c in classes])
        for row in rows:
            writer.writerow([row[k] for k in fields] + [row['iou'][c] for c in classes])
    verdicts = []
    for label, first, second in comparisons(setting):
        result = compare(records, first, second)
        if result is not None:
            verdicts.append(dict(label=label, **result))
    with open(osp.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(dict(rows=rows, comparisons=verdicts), f, indent=1)
    lines = ['| model, decisions | seeds | mIoU | small-object mIoU | pole / ball / box IoU | '
             'backbone GMACs (min-max) | whole-model GMACs | fine | fine on detailed / uniform | '
             'train s |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for row in sorted(rows, key=lambda r: (r['family'], -r['gmacs'])):
        iou = row['iou']
        lines.append(
            f"| {row['label']} | {len(row['seeds'])} | {fmt(row['mIoU'], row['mIoU_std'])} | "
            f"{fmt(row['small_mIoU'], row['small_mIoU_std'])} | "
            + ' / '.join(f'{iou.get(c, float("nan")):.1f}' for c in SMALL_CLASSES) +
            f" | {row['gmacs']:.3f} ({row['gmacs_min']:.2f}-{row['gmacs_max']:.2f}) | "
            f"{row.get('model_gmacs', float('nan')):.3f} | "
            f"{row['fine_fraction']:.2f} | {row['fine_on_detailed']:.2f} / "
            f"{row['fine_on_uniform']:.2f} | {row['train_seconds']:.0f} |")
    lines += ['', '| comparison (first minus second, paired by seed) | mIoU difference | '
              'per seed | backbone GMACs ratio | whole-model GMACs ratio | mean - std > 0 |',
              '| --- | --- | --- | --- | --- | --- |']
    for v in verdicts:
        per_seed = ' / '.join(f'{d:+.1f}' for d in v.get('deltas', []))
        above = 'one seed' if len(v['seeds']) < 2 else \
            ('yes' if v['delta'] - v['delta_std'] > 0 else 'no')
        lines.append(f"| {v['label']} | {v['delta']:+.2f} ± {v['delta_std']:.2f} | {per_seed} | "
                     f"{v['gmacs_ratio']:.2f} | {v.get('model_gmacs_ratio', float('nan')):.2f} | "
                     f"{above} |")
    with open(osp.join(out_dir, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plot(rows, osp.join(out_dir, 'study.png'))
    plot_whole_model(rows, osp.join(out_dir, 'whole_model.png'))
    print('\n'.join(lines), flush=True)
    print(f'[study] wrote summary.csv, summary.json, summary.md, study.png, whole_model.png to {out_dir}')


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(17, 5.8), sharey=True)
    families = {}
    for row in rows:
        families.setdefault(row['family'], []).append(row)
    markers = 'osD^v<>phX*P'
    colours = plt.cm.tab20.colors  # one colour per curve (up to 20), markers cycle besides
    for ax, key, title in ((axes[0], 'gmacs', 'backbone GMACs per image'),
                           (axes[1], 'model_gmacs', 'whole-model GMACs per image (backbone + '
                            'neck + head)')):
        for index, (name, group) in enumerate(sorted(families.items())):
            group = sorted(group, key=lambda r: r['gmacs'])
            if any(r.get(key) != r.get(key) or r.get(key) is None for r in group):
                continue  # an older results file without whole-model GMACs
            ax.errorbar([r[key] for r in group], [r['mIoU'] for r in group],
                        xerr=[r[f'{key}_std'] for r in group],
                        yerr=[r['mIoU_std'] for r in group],
                        fmt=markers[index % len(markers)] + ('-' if len(group) > 1 else ''),
                        color=colours[index % len(colours)], capsize=2, markersize=5,
                        elinewidth=0.8, alpha=0.9, label=name)
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('mIoU (mean ± std over seeds)')
    axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: the curves of the whole-model picture (what a user choosing a model compares)
WHOLE_MODEL_FAMILIES = (
    'dense ViT, input downscaled', 'recipe, content gate',
    'recipe + mixed-scale decoding (recommended with UPerNet), content gate',
    'dense ViT, neck and head at 1/2 resolution (fine-tuned)',
    'dense ViT + content gate (training-free)',
    'recipe + mixed-scale decoding at x4 only (x2 dense), content gate')


def plot_whole_model(rows, path):
    """mIoU against whole-model GMACs for :data:`WHOLE_MODEL_FAMILIES` only, each point labelled
    with its input scale or budget."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = 'osD^vP'
    for index, name in enumerate(WHOLE_MODEL_FAMILIES):
        group = sorted([r for r in rows if r['family'] == name and
                        r.get('model_gmacs') == r.get('model_gmacs')],
                       key=lambda r: r['model_gmacs'])
        if not group:
            continue
        ax.errorbar([r['model_gmacs'] for r in group], [r['mIoU'] for r in group],
                    yerr=[r['mIoU_std'] for r in group], fmt=markers[index] + '-', capsize=3,
                    markersize=6, label=name)
        for r in group:
            tag = r['eval'].replace('content', '').replace('scale', 'x')
            ax.annotate(tag, (r['model_gmacs'], r['mIoU']), textcoords='offset points',
                        xytext=(4, -10), fontsize=7)
    ax.set_xlabel('whole-model GMACs per image (backbone + neck + head)')
    ax.set_ylabel('mIoU (mean ± std over seeds)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
