"""Export in budget mode: static shapes, so torch.export and ONNX (dynamo exporter) work.

In budget mode (``MSViT(fine_budget=f)``) every image keeps ``round(f * regions)`` fine regions,
so the token count is a function of the input size alone; threshold mode refuses to be traced
(its token count depends on the image). The wrappers below give exporters plain tensors.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .models.features import MixedScaleMaps, layout_of


class DenseBackbone(nn.Module):
    """An MSViT whose outputs are tensors: the dense map of every tap (B, D, H/16, W/16) and
    the fine mask (B, Hc, Wc) as float."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.backbone(img)
        maps = features if isinstance(features, MixedScaleMaps) else \
            [f.to_dense() for f in features]
        return (*maps, layout_of(features).fine_mask.float())


class SegmentorLogits(nn.Module):
    """A segmentor's ``mode='tensor'`` forward on already normalised inputs: the decode head's
    logits (at 1/4 or the head's output size), or, with ``full_size``, bilinearly resized to the
    input's size, and with ``labels`` the class index of every pixel (argmax over classes)."""

    def __init__(self, segmentor: nn.Module, full_size: bool = False,
                 labels: bool = False) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.full_size = full_size or labels
        self.labels = labels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor(inputs, mode='tensor')
        if self.full_size:
            logits = nn.functional.interpolate(logits, size=inputs.shape[-2:], mode='bilinear',
                                               align_corners=False)
        return logits.argmax(1) if self.labels else logits


def check_budget_mode(backbone) -> None:
    """Export needs static shapes: budget mode or a forced scale."""
    if getattr(backbone, 'fine_budget', None) is None and \
            getattr(backbone, 'force_scale', None) is None:
        raise ValueError('export: the backbone is in threshold mode (token count per image '
                         'depends on the image); set a fine budget, e.g. --fine-budget 0.5 or '
                         'model.backbone.fine_budget=0.5')


def export_onnx(module: nn.Module, example: torch.Tensor, path: str,
                input_names: Optional[Sequence[str]] = None,
                output_names: Optional[Sequence[str]] = None,
                metadata: Optional[dict] = None, check=None) -> None:
    """Export ``module(example)`` with the dynamo-based exporter (torch.export) to ``path``,
    with the given input/output names and ``metadata`` (str -> str, the model's
    ``metadata_props``, which onnxruntime returns as ``get_modelmeta().custom_metadata_map``).

    ``check(tmp_path)``, when given, runs on the written file before it replaces ``path``: if it
    raises, ``path`` is left as it was and no file is left behind."""
    from .engine.fileio import atomic_path
    program = torch.onnx.export(module, (example, ), dynamo=True, verbose=False,
                                input_names=list(input_names) if input_names else None,
                                output_names=list(output_names) if output_names else None)
    for key, value in (metadata or {}).items():
        program.model.metadata_props[str(key)] = str(value)
    with atomic_path(path) as tmp_path:  # a failed or killed export leaves no partial file
        program.save(tmp_path)
        if check is not None:
            check(tmp_path)


def export_metadata(model: nn.Module, cfg, shape: Sequence[int], fine_budget: float,
                    output: str) -> dict:
    """What a deployed file needs to be used alone: the input normalisation, the classes, the
    input size, the budget and what the output is (JSON values as strings)."""
    import json
    metadata = dict(producer='mmseg_msvit', input='image: (N, 3, H, W) float32, RGB or BGR as '
                    'bgr_to_rgb says, normalised (pixel - mean) / std', output=output,
                    input_size=json.dumps(list(shape)), fine_budget=str(fine_budget))
    preprocessor = getattr(model, 'data_preprocessor', None)
    if getattr(preprocessor, '_enable_normalize', False):
        metadata['mean'] = json.dumps([float(v) for v in preprocessor.mean.flatten()])
        metadata['std'] = json.dumps([float(v) for v in preprocessor.std.flatten()])
        metadata['bgr_to_rgb'] = json.dumps(bool(getattr(preprocessor, 'channel_conversion',
                                                         False)))
    dataset = cfg.get('test_dataloader', {}).get('dataset', {}) if cfg is not None else {}
    classes = (dataset.get('metainfo') or {}).get('classes')
    if classes is None and dataset.get('type'):
        from mmseg.registry import DATASETS
        classes = (getattr(DATASETS.get(dataset['type']), 'METAINFO', None) or {}).get('classes')
    if classes is not None:
        metadata['classes'] = json.dumps(list(classes))
    return metadata


def onnxruntime_outputs(path: str, example: torch.Tensor) -> Sequence[np.ndarray]:
    """Run the ONNX file with onnxruntime (CPU) on ``example``."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return session.run(None, {name: example.cpu().numpy()})


def max_abs_difference(eager, onnx_outputs) -> float:
    """Largest absolute difference between eager outputs and onnxruntime's."""
    eager = eager if isinstance(eager, (tuple, list)) else (eager, )
    if len(eager) != len(onnx_outputs):
        raise ValueError(f'export check: {len(eager)} eager outputs, {len(onnx_outputs)} ONNX')
    return max(float(np.abs(e.detach().cpu().numpy() - o).max())
               for e, o in zip(eager, onnx_outputs))
