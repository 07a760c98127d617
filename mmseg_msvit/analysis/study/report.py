"""The evidence study's report (``tools/analysis_tools/msvit_study.py``).

:func:`summarise` turns per-seed records into mean +- std rows; :func:`compare` sets two rows
side by side, paired by seed. :func:`write_outputs` writes summary.csv, summary.json and
summary.md (the table, then the :func:`comparisons`) and the plots (study.png: mIoU against
backbone and whole-model GMACs, one curve per :func:`family`; whole_model.png: the
:data:`WHOLE_MODEL_FAMILIES`), the dense model's downscaling interpolated to equal whole-model
GMACs included (:func:`interpolated_records`, derived, never written to results.jsonl).
"""
import csv
import json
import math
import os.path as osp
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .runs import SHARED_RUNS, SHIPPED_RUN, SMALL_CLASSES, runs


# ---------------------------------------------------------------------------------- aggregation
SUMMARY_KEYS = ('mIoU', 'small_mIoU', 'gmacs', 'gmacs_min', 'gmacs_max', 'model_gmacs',
                'fine_fraction', 'fine_on_detailed', 'fine_on_uniform', 'train_seconds')


def _mean_std(values: Sequence[float]):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float('nan'), float('nan')
    array = np.asarray(values, np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarise(records: Iterable[dict]) -> List[dict]:
    """Mean and sample std over seeds for every (run, eval) pair, in first-seen order.

    Each record holds ``run``, ``eval``, ``seed`` and the metrics of :meth:`StudyEvaluator.
    evaluate` (plus ``train_seconds``). Rows carry ``<key>`` (mean) and ``<key>_std`` for the
    :data:`SUMMARY_KEYS`, per-class IoU means under ``iou``, and ``seeds``.
    """
    groups: Dict[tuple, List[dict]] = {}
    for record in records:
        groups.setdefault((record['run'], record['eval']), []).append(record)
    rows = []
    for (run, name), group in groups.items():
        row = dict(run=run, eval=name, seeds=sorted(r['seed'] for r in group),
                   label=group[0].get('label', f'{run} / {name}'),
                   family=group[0].get('family', run))
        for key in SUMMARY_KEYS:
            row[key], row[f'{key}_std'] = _mean_std([r.get(key) for r in group])
        classes = group[0].get('iou', {})
        row['iou'] = {c: _mean_std([r['iou'][c] for r in group])[0] for c in classes}
        rows.append(row)
    return rows


def compare(records: Iterable[dict], first: tuple, second: tuple) -> Optional[dict]:
    """``first`` minus ``second`` (each a (run, eval) pair) in mIoU and GMACs, paired by seed.

    Returns None when the two share no seed; otherwise ``delta`` (mean of the per-seed mIoU
    differences), ``delta_std``, ``deltas`` (per seed, in ``seeds`` order), ``gmacs_ratio`` (mean
    backbone GMACs first / second), ``model_gmacs_ratio`` (the same for whole-model GMACs), ``seeds`` and
    ``separated``: whether the mean +- std intervals of the two do not overlap (None with fewer
    than two seeds: there is no spread to compare).
    """
    by_key: Dict[tuple, Dict[int, dict]] = {}
    for record in records:
        by_key.setdefault((record['run'], record['eval']), {})[record['seed']] = record
    a, b = by_key.get(tuple(first), {}), by_key.get(tuple(second), {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    deltas = [a[s]['mIoU'] - b[s]['mIoU'] for s in seeds]
    mean_a, std_a = _mean_std([a[s]['mIoU'] for s in seeds])
    mean_b, std_b = _mean_std([b[s]['mIoU'] for s in seeds])
    delta, delta_std = _mean_std(deltas)
    low, high = sorted([(mean_a - std_a, mean_a + std_a), (mean_b - std_b, mean_b + std_b)])
    return dict(first=list(first), second=list(second), seeds=seeds, delta=delta,
                delta_std=delta_std, deltas=deltas,
                gmacs_ratio=float(np.mean([a[s]['gmacs'] for s in seeds]) /
                                  np.mean([b[s]['gmacs'] for s in seeds])),
                model_gmacs_ratio=float(np.mean([a[s].get('model_gmacs', np.nan) for s in seeds])
                                        / np.mean([b[s].get('model_gmacs', np.nan)
                                                   for s in seeds])),
                separated=bool(low[1] < high[0]) if len(seeds) > 1 else None)


# ---------------------------------------------------------------------------------- outputs
STRUCTURE_FAMILY = 'recipe + mixed-scale decoding, one stage, structure score'
CONTRAST_FAMILY = 'recipe + mixed-scale decoding, one stage, structure + contrast'
#: the configs' recipe (SHIPPED_RUN): the above, the mixed pass' gradient into the shared
#: weights x0.25 and running statistics from the dense pass; its curve runs to budget 1.0
SHIPPED_FAMILY = 'the same, shared gradient x0.25, dense statistics (the configs; to 1.0)'


def family(run, name):
    """The curve a result belongs to in the plot."""
    if run == SHIPPED_RUN and (name.startswith('contrast') or name == 'scale1.0'):
        return SHIPPED_FAMILY
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
    if name.startswith('transfer'):
        return f'{run} + gate transferred from the classifier (budget curve)'
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
        return 'recipe + mixed-scale decoding (frozen teacher), content gate'
    if run == 'recipe_mixed_head_x4':
        return 'recipe + mixed-scale decoding at x4 only (x2 dense), content gate'
    if run == 'recipe_mixed_head_inplace_structure' and name.startswith('structure'):
        return STRUCTURE_FAMILY
    if run == 'recipe_mixed_head_inplace_contrast' and name.startswith('contrast'):
        return CONTRAST_FAMILY
    return run


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
    # the classifier's gate on the mixed-decoding recipe, at every budget: as it comes (no
    # segmentation data) and fine-tuned there, against the content gate and gates trained on
    # the segmentation data
    # the gate of the classifier's kind (cls_gate) trained on the segmentation data only
    same_kind = 'recipe_mixed_head_gate' if setting['cls_gate'] == 'content_prior' else \
        'recipe_mixed_head_gate_mlp'
    for x in setting['budgets']:
        transferred = ('recipe_mixed_head', f'transfer{x}')
        tuned = ('recipe_mixed_head_gate_transfer', f'budget{x}')
        pairs += [
            (f'budget {x}: classifier gate (transferred, no segmentation training) vs content '
             'gate', transferred, ('recipe_mixed_head', f'content{x}')),
            (f'budget {x}: classifier gate (transferred) vs the same kind of gate trained on '
             f'the segmentation data ({same_kind})', transferred, (same_kind, f'budget{x}')),
            (f'budget {x}: classifier gate fine-tuned on the segmentation data vs content gate',
             tuned, ('recipe_mixed_head', f'content{x}')),
            (f'budget {x}: classifier gate fine-tuned vs the same kind of gate trained from '
             f'scratch on the segmentation data ({same_kind})', tuned, (same_kind, f'budget{x}')),
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
    # one stage (in-place distillation) against the same recipe with the frozen teacher (and,
    # through equal_cost_targets, against downscaling at equal whole-model GMACs)
    inplace = ('recipe_inplace', f'content{b}')
    mixed_inplace = ('recipe_mixed_head_inplace', f'content{b}')
    structure = ('recipe_mixed_head_inplace_structure', f'structure{b}')
    contrast = ('recipe_mixed_head_inplace_contrast', f'contrast{b}')
    contrast_kd = ('recipe_mixed_head_inplace_contrast_kd', f'contrast{b}')
    pairs += [
        ('recipe_inplace vs recipe (frozen teacher)', inplace, ('recipe', f'content{b}')),
        ('recipe_inplace vs content gate (training-free)', inplace, ('dense', f'content{b}')),
        ('recipe_mixed_head_inplace vs recipe_mixed_head (frozen teacher)', mixed_inplace,
         mixed_head),
        ('recipe_mixed_head_inplace vs recipe (dense neck and head)', mixed_inplace,
         ('recipe', f'content{b}')),
        ('recipe_mixed_head_inplace vs dense with its neck and head at 1/2 resolution',
         mixed_inplace, ('dense_half_head', 'scale1.0')),
        ('recipe_mixed_head_inplace_structure vs recipe_mixed_head_inplace (pixel energy)',
         structure, mixed_inplace),
        ('recipe_mixed_head_inplace_structure vs dense with its neck and head at 1/2 resolution',
         structure, ('dense_half_head', 'scale1.0')),
        ('recipe_mixed_head_inplace_structure vs recipe (dense neck and head)', structure,
         ('recipe', f'content{b}')),
        ('recipe_mixed_head_inplace_structure vs recipe_inplace (dense neck and head)',
         structure, inplace),
        ('recipe_mixed_head_inplace_structure: label oracle vs structure gate',
         ('recipe_mixed_head_inplace_structure', f'oracle{b}'), structure),
        ('recipe_mixed_head_inplace_contrast vs recipe_mixed_head_inplace_structure', contrast,
         structure),
        ('recipe_mixed_head_inplace_contrast vs recipe_mixed_head_inplace (pixel energy)',
         contrast, mixed_inplace),
        ('recipe_mixed_head_inplace_contrast vs dense with its neck and head at 1/2 resolution',
         contrast, ('dense_half_head', 'scale1.0')),
        ('recipe_mixed_head_inplace_contrast vs recipe (dense neck and head)', contrast,
         ('recipe', f'content{b}')),
        ('recipe_mixed_head_inplace_contrast vs recipe_mixed_head (frozen teacher, pixel '
         'energy)', contrast, mixed_head),
        ('recipe_mixed_head_inplace_contrast: label oracle vs its gate',
         ('recipe_mixed_head_inplace_contrast', f'oracle{b}'), contrast),
        ('recipe_mixed_head_inplace_contrast_kd (no task loss on the mixed pass) vs '
         'recipe_mixed_head_inplace_contrast', contrast_kd, contrast),
        ('recipe_mixed_head_inplace_contrast_kd, every region fine, vs '
         'recipe_mixed_head_inplace_contrast, every region fine',
         ('recipe_mixed_head_inplace_contrast_kd', 'scale1.0'),
         ('recipe_mixed_head_inplace_contrast', 'scale1.0')),
    ]
    # the mixed pass' gradient into the shared weights scaled, running statistics from the
    # dense pass: against the configs' recipe, at the budget and every region fine
    shared = [(run, f'contrast{b}') for run in runs(setting) if run.startswith(SHARED_RUNS)]
    for run, name in shared:
        pairs += [(f'{run} vs recipe_mixed_head_inplace_contrast', (run, name), contrast),
                  (f'{run}, every region fine, vs recipe_mixed_head_inplace_contrast, every '
                   'region fine', (run, 'scale1.0'), (contrast[0], 'scale1.0'))]
    # the one-stage runs against the dense model trained as long, at the budget and every
    # region fine (issue 32: one checkpoint for every budget)
    for (run, name) in [inplace, mixed_inplace, contrast, contrast_kd] + shared:
        pairs += [(f'{run} vs dense', (run, name), ('dense', 'scale1.0')),
                  (f'{run}, every region fine, vs dense', (run, 'scale1.0'),
                   ('dense', 'scale1.0'))]
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
               ('recipe_mixed_head_gate', f"budget{setting['budget']}"),
               ('recipe_inplace', f"content{setting['budget']}"),
               ('recipe_mixed_head_inplace', f"content{setting['budget']}"),
               ('recipe_mixed_head_inplace_structure', f"structure{setting['budget']}"),
               ('recipe_mixed_head_inplace_contrast', f"contrast{setting['budget']}"),
               ('recipe_mixed_head_inplace_contrast_kd', f"contrast{setting['budget']}")] + \
        [(run, f"contrast{setting['budget']}") for run in runs(setting)
         if run.startswith(SHARED_RUNS)]
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
    """``mean ± std`` with ``digits`` decimals; 'n/a' for a NaN mean."""
    return 'n/a' if mean != mean else f'{mean:.{digits}f} ± {std:.{digits}f}'


def write_outputs(records, setting, out_dir):
    """summary.csv, summary.json, summary.md, study.png and whole_model.png of ``records`` (the
    results.jsonl records) into ``out_dir``; the table is printed too."""
    stored = len(records)
    older = sum(1 for r in records if 'unpool_in_neck' not in r)
    # the plot's curve of each result is derived from its run and evaluation, never stored
    records = records + interpolated_records(records, setting)
    records = [dict(r, family=family(r['run'], r['eval'])) for r in records]
    rows = summarise(records)
    fields = ['run', 'eval', 'label', 'family', 'seeds'] + \
        [k for key in SUMMARY_KEYS for k in (key, f'{key}_std')]
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
    if older and older < stored:
        lines += ['', f'{older} of the {stored} results were recorded when backbone GMACs '
                  "included the neck's coarse-token unpooling (models with `coarse_unpool`); "
                  'compare those models by whole-model GMACs, which are counted alike.']
    with open(osp.join(out_dir, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plot(rows, osp.join(out_dir, 'study.png'))
    plot_whole_model(rows, osp.join(out_dir, 'whole_model.png'))
    print('\n'.join(lines), flush=True)
    print(f'[study] wrote summary.csv, summary.json, summary.md, study.png, whole_model.png to {out_dir}')


def plot(rows, path):
    """mIoU against backbone and against whole-model GMACs, one curve per family (the seed
    spread as error bars)."""
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
    'recipe + mixed-scale decoding (frozen teacher), content gate',
    STRUCTURE_FAMILY, CONTRAST_FAMILY, SHIPPED_FAMILY,
    'dense ViT, neck and head at 1/2 resolution (fine-tuned)',
    'dense ViT + content gate (training-free)',
    'recipe + mixed-scale decoding at x4 only (x2 dense), content gate')


def plot_whole_model(rows, path):
    """mIoU against whole-model GMACs for :data:`WHOLE_MODEL_FAMILIES` only, each point labelled
    with its input scale or budget."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 8))
    markers = 'osD^vP*X'  # cycled: one curve per family
    for index, name in enumerate(WHOLE_MODEL_FAMILIES):
        group = sorted([r for r in rows if r['family'] == name and
                        r.get('model_gmacs') == r.get('model_gmacs')],
                       key=lambda r: r['model_gmacs'])
        if not group:
            continue
        ax.errorbar([r['model_gmacs'] for r in group], [r['mIoU'] for r in group],
                    yerr=[r['mIoU_std'] for r in group], fmt=markers[index % len(markers)] + '-',
                    capsize=3, markersize=6, label=name)
        for r in group:
            # the input scale (x0.75) or the budget (0.42), whatever the gate's name; the
            # shipped recipe's every-fine point is its budget 1.0
            budget_one = r['family'] == SHIPPED_FAMILY and r['eval'] == 'scale1.0'
            tag = ('x' if r['eval'].startswith('scale') and not budget_one else '') + \
                r['eval'].lstrip('abcdefghijklmnopqrstuvwxyz_')
            ax.annotate(tag, (r['model_gmacs'], r['mIoU']), textcoords='offset points',
                        xytext=(4, -10), fontsize=7)
    ax.set_xlabel('whole-model GMACs per image (backbone + neck + head)')
    ax.set_ylabel('mIoU (mean ± std over seeds)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.12))  # below: no curve hidden
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
