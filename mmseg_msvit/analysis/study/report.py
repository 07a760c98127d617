"""The evidence study's report (``tools/analysis_tools/msvit_study.py``).

:func:`summarise` turns per-seed records into mean +- std rows; :func:`compare` sets two rows
side by side, paired by seed.
"""
import math
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

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
