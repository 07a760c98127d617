"""Export in budget mode: static shapes, so torch.export and ONNX (dynamo exporter) work.

In budget mode (``MSViT(fine_budget=f)``) every image keeps ``round(f * regions)`` fine regions,
so the token count is a function of the input size alone; threshold mode refuses to be traced
(its token count depends on the image). The wrappers below give exporters plain tensors.
"""
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn


class DenseBackbone(nn.Module):
    """An MSViT whose outputs are tensors: the dense map of every tap (B, D, H/16, W/16) and
    the fine mask (B, Hc, Wc) as float."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.backbone(img)
        return (*(f.to_dense() for f in features), features[0].layout.fine_mask.float())


class SegmentorLogits(nn.Module):
    """A segmentor's ``mode='tensor'`` forward (logits at 1/4 or the head's output size) on
    already normalised inputs."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.segmentor(inputs, mode='tensor')


def check_budget_mode(backbone) -> None:
    """Export needs static shapes: budget mode or a forced scale."""
    if getattr(backbone, 'fine_budget', None) is None and \
            getattr(backbone, 'force_scale', None) is None:
        raise ValueError('export: the backbone is in threshold mode (token count per image '
                         'depends on the image); set a fine budget, e.g. --fine-budget 0.5 or '
                         'model.backbone.fine_budget=0.5')


def export_onnx(module: nn.Module, example: torch.Tensor, path: str) -> None:
    """Export ``module(example)`` with the dynamo-based exporter (torch.export) to ``path``."""
    from .engine.fileio import atomic_path
    program = torch.onnx.export(module, (example, ), dynamo=True, verbose=False)
    with atomic_path(path) as tmp_path:  # a failed or killed export leaves no partial file
        program.save(tmp_path)


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
