"""The evidence study (``tools/analysis_tools/msvit_study.py``) as a library, one part a module:

* :mod:`.runs` - the registry: the settings, the table of runs (what each trains from and how
  it is evaluated) and where a run's files go;
* :mod:`.configs` - the mmengine config of one training run, by mutating the demo config;
* :mod:`.evaluator` - :class:`StudyEvaluator`: one trained segmentor under several decision
  rules (the scale forced, its own gate, a training-free gate, a gate file's gate, the label
  oracle);
* :mod:`.orchestration` - :class:`~.orchestration.Study`: the training subprocesses, the
  resumable ``results.jsonl`` (:func:`read_results`), the evaluation calls; the synthetic data;
* :mod:`.report` - :func:`summarise` (mean +- std over seeds), :func:`compare` (two results
  paired by seed), summary.csv/json/md and the plots.

The names below are importable from here (``from mmseg_msvit.analysis.study import
StudyEvaluator, read_results, summarise, compare, oracle_fine_mask``).
"""
from .evaluator import RULES, StudyEvaluator, oracle_fine_mask
from .orchestration import read_results
from .report import SUMMARY_KEYS, compare, summarise

__all__ = ['RULES', 'StudyEvaluator', 'oracle_fine_mask', 'read_results', 'SUMMARY_KEYS',
           'summarise', 'compare']
