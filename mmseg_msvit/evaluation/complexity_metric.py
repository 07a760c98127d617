"""ComplexityMetric: compute cost per image beside mIoU."""
from typing import Dict, List, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmpretrain.registry import METRICS as PRETRAIN_METRICS
from mmseg.registry import METRICS


@PRETRAIN_METRICS.register_module()
@METRICS.register_module()
class ComplexityMetric(BaseMetric):
    """Backbone GMACs per image (mean / min / max), fine-token fraction and tokens per image;
    with a neck and head that count themselves (``MixedScaleToDense`` + ``MixedScaleUPerHead``)
    also the neck + head and the whole-model GMACs per image (mean / min / max).

    Reads what :class:`MSViTEncoderDecoder` writes into each prediction's metainfo
    (``msvit_backbone_macs``, ``msvit_fine_fraction``, ``msvit_num_tokens``,
    ``msvit_decode_macs``), so the figures are those of the forward passes that produced the
    predictions (every slide window counted).

    Args:
        prefix (str, optional): metric name prefix. Default: None.
        collect_device (str): Default: 'cpu'.
    """
    default_prefix = 'complexity'
    _KEYS = ('msvit_backbone_macs', 'msvit_fine_fraction', 'msvit_num_tokens')

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            missing = [key for key in self._KEYS if key not in sample]
            if missing:
                raise KeyError(f'ComplexityMetric: prediction lacks {missing}; the model must be '
                               'an MSViTEncoderDecoder or MSViTImageClassifier (they record the '
                               'cost of every forward)')
            self.results.append(tuple(float(sample[key]) for key in self._KEYS) +
                                (float(sample.get('msvit_decode_macs', np.nan)), ))

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        values = np.asarray(results, dtype=np.float64)
        gmacs = values[:, 0] / 1e9
        metrics = {
            'backbone_gmacs': round(float(gmacs.mean()), 4),
            'backbone_gmacs_min': round(float(gmacs.min()), 4),
            'backbone_gmacs_max': round(float(gmacs.max()), 4),
            'fine_fraction': round(float(values[:, 1].mean()), 4),
            'tokens_per_image': round(float(values[:, 2].mean()), 2),
        }
        decode = values[:, 3] / 1e9
        if not np.isnan(decode).any():
            whole = gmacs + decode
            metrics.update(decode_gmacs=round(float(decode.mean()), 4),
                           model_gmacs=round(float(whole.mean()), 4),
                           model_gmacs_min=round(float(whole.min()), 4),
                           model_gmacs_max=round(float(whole.max()), 4))
        return metrics
