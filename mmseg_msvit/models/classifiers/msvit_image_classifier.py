"""mmpretrain ImageClassifier with the MSViT backbone: the CLS token to the head, plus the gate
loss (registered in mmpretrain's MODELS)."""
from typing import List, Optional

import torch
from mmpretrain.models.classifiers import ImageClassifier
from mmpretrain.registry import MODELS as PRETRAIN_MODELS

from ..backbones import MSViT
from ..checkpoints import check_gate_normalisation
from ..costs import attach_cost, image_cost
from ..features import layout_of
from ..gate_training import (build_gate_loss, build_gate_probe, current_target,
                             gate_loss_and_stats)
from ..policy import ScalePolicy

# MSViT usable from mmpretrain configs too (type='MSViT' under the mmpretrain scope)
PRETRAIN_MODELS.register_module(name='MSViT', module=MSViT, force=True)


@PRETRAIN_MODELS.register_module()
class MSViTImageClassifier(ImageClassifier):
    """Classification with MSViT: the head sees the CLS token of each backbone tap.

    Training adds ``gate_loss`` (e.g. GBaS) on the gate probabilities of the same forward (read
    from the layout the backbone returns) and logs ``gate.fine_fraction`` and
    ``gate.tokens_per_image``, as :class:`MSViTEncoderDecoder`; the optional ``gate_probe``
    measures with the classification head's own loss.

    Args:
        gate_loss (dict, optional): gate loss config (built from mmseg's registry).
        gate_probe (dict, optional): a ``GateProbe`` config (our option); None: no probe.
        head_from_timm (str, optional): a local timm/DeiT checkpoint whose classifier
            (``head.weight``, ``head.bias``) initialises the head's last Linear layer.
        Others: as mmpretrain's ImageClassifier (backbone must be an MSViT).

    A :class:`~mmseg_msvit.models.ScalePolicy` passed to ``predict`` or ``extract_feat``
    decides the scales of that call only. Prediction: each sample's metainfo gets
    ``msvit_backbone_macs``, ``msvit_fine_fraction``, ``msvit_num_tokens``,
    ``msvit_forwards`` and ``msvit_fine_mask`` (read by ``ComplexityMetric``).
    """

    def __init__(self, *args, gate_loss: Optional[dict] = None,
                 gate_probe: Optional[dict] = None,
                 head_from_timm: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_from_timm = head_from_timm
        if not isinstance(self.backbone, MSViT):
            raise TypeError('MSViTImageClassifier: the backbone must be an MSViT, got '
                            f'{type(self.backbone).__name__}')
        if self.backbone.out_type != 'tokens':
            raise ValueError("MSViTImageClassifier: the head reads CLS tokens; the backbone's "
                             f"out_type must be 'tokens', got {self.backbone.out_type!r}")
        if not self.backbone.with_cls_token:
            raise ValueError('MSViTImageClassifier: the head reads the CLS token, but the '
                             'backbone has with_cls_token=False (no token attends to it)')
        self.gate_loss = build_gate_loss(gate_loss, self.backbone, 'MSViTImageClassifier')
        self.gate_probe = build_gate_probe(gate_probe, 'MSViTImageClassifier')
        self.backbone.declare_gate_training(
            'MSViTImageClassifier', self.gate_loss is not None or self.gate_probe is not None)

    def _neck(self, features) -> tuple:
        cls_tokens = tuple(f.cls_token for f in features)  # (B, D) per tap
        return self.neck(cls_tokens) if self.with_neck else cls_tokens

    def extract_feat(self, inputs: torch.Tensor, stage: str = 'neck',
                     policy: Optional[ScalePolicy] = None):
        features = self.backbone(inputs, policy)
        if stage == 'backbone':
            return features
        cls_tokens = self._neck(features)
        if stage == 'neck':
            return cls_tokens
        return self.head.pre_logits(cls_tokens)

    def loss(self, inputs: torch.Tensor, data_samples: List) -> dict:
        features = self.backbone(inputs)
        layout = layout_of(features)
        losses = self.head.loss(self._neck(features), data_samples)
        losses.update(gate_loss_and_stats(layout, self.gate_loss))
        if self.gate_probe is not None and layout.gate_logits is not None:
            losses[self.gate_probe.loss_name] = self.gate_probe(
                self, inputs, data_samples, layout, current_target(self.gate_loss))
        return losses

    def task_loss_per_image(self, inputs: torch.Tensor, data_samples: List,
                            fine_mask: torch.Tensor,
                            fine_value: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N,) the head's own loss per image with the given scale decisions (gate probe)."""
        feats = self._neck(self.backbone(inputs, fine_mask=fine_mask, fine_value=fine_value))
        return torch.stack([
            self.parse_losses(self.head.loss(tuple(f[i:i + 1] for f in feats), [sample]))[0]
            for i, sample in enumerate(data_samples)
        ])

    def init_weights(self) -> None:
        super().init_weights()
        check_gate_normalisation(self.backbone, self.data_preprocessor)
        if self.head_from_timm:
            self.load_timm_head(self.head_from_timm)

    def load_timm_head(self, path: str) -> None:
        """Copy a timm classifier (``head.weight`` (K, D), ``head.bias``) into the head."""
        from ..checkpoints import load_timm_state_dict
        state = load_timm_state_dict(path)
        if 'head.weight' not in state:
            raise KeyError(f'MSViTImageClassifier: {path!r} has no head.weight')
        linears = [m for m in self.head.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise TypeError('MSViTImageClassifier: the head has no Linear layer to load into')
        last = linears[-1]
        if tuple(last.weight.shape) != tuple(state['head.weight'].shape):
            raise ValueError(f'MSViTImageClassifier: timm head in {path!r} is '
                             f"{tuple(state['head.weight'].shape)} (classes, width), the head "
                             f'expects {tuple(last.weight.shape)}')
        with torch.no_grad():
            last.weight.copy_(state['head.weight'])
            last.bias.copy_(state['head.bias'])

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List] = None,
                policy: Optional[ScalePolicy] = None, **kwargs):
        """mmpretrain's ``predict`` plus the cost in every sample's metainfo; under ``policy``
        for this call (None: the backbone's)."""
        features = self.backbone(inputs, policy)
        results = self.head.predict(self._neck(features), data_samples, **kwargs)
        layout = layout_of(features)
        return attach_cost(results, image_cost(self.backbone, layout), layout.fine_mask)
