"""ComplexityMetric: compute cost per image beside mIoU."""
import json
from typing import Dict, List, Optional, Sequence

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

    With ``per_image_file`` it also writes one JSON line per image (``tools/test.py
    --per-image``): ``img_path``; ``backbone_gmacs``, ``decode_gmacs`` (neck + head, null when
    the head does not count itself) and ``model_gmacs``, GMACs = 1e9 multiply-adds of that
    image's forward passes (every slide window or TTA view summed); ``fine_fraction``;
    ``num_tokens``; ``fine_mask``, one row of 0/1 per row of 32 px regions of the input *as the
    model saw it* (after the test pipeline's resize and padding to a multiple of 32; null in
    slide mode, where windows overlap).

    Args:
        per_image_file (str, optional): the JSON-lines file to write. Default: None.
        prefix (str, optional): metric name prefix. Default: None.
        collect_device (str): Default: 'cpu'.
    """
    default_prefix = 'complexity'
    _KEYS = ('msvit_backbone_macs', 'msvit_fine_fraction', 'msvit_num_tokens')

    def __init__(self, per_image_file: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if per_image_file is not None and not isinstance(per_image_file, str):
            raise ValueError('ComplexityMetric: per_image_file must be a file path, got '
                             f'{per_image_file!r}')
        self.per_image_file = per_image_file

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            missing = [key for key in self._KEYS if key not in sample]
            if missing:
                raise KeyError(f'ComplexityMetric: prediction lacks {missing}; the model must be '
                               'an MSViTEncoderDecoder or MSViTImageClassifier (they record the '
                               'cost of every forward)')
            row = tuple(float(sample[key]) for key in self._KEYS) + \
                (float(sample.get('msvit_decode_macs', np.nan)), )
            if self.per_image_file is not None:
                mask = sample.get('msvit_fine_mask')
                mask = None if mask is None else np.asarray(mask.cpu(), np.uint8).tolist()
                row = row + (sample.get('img_path'), mask)
            self.results.append(row)

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        if self.per_image_file is not None:
            self._write_per_image(results)
        values = np.asarray([row[:4] for row in results], dtype=np.float64)
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

    def _write_per_image(self, results: List[tuple]) -> None:
        from ..engine.fileio import atomic_write
        lines = []
        for backbone, fine, tokens, decode, path, mask in results:
            decode = None if np.isnan(decode) else round(decode / 1e9, 6)
            lines.append(json.dumps(dict(
                img_path=path, backbone_gmacs=round(backbone / 1e9, 6), decode_gmacs=decode,
                model_gmacs=None if decode is None else round(backbone / 1e9 + decode, 6),
                fine_fraction=round(fine, 6), num_tokens=tokens, fine_mask=mask)))
        text = '\n'.join(lines) + '\n'
        atomic_write(self.per_image_file, lambda f: f.write(text.encode()))
