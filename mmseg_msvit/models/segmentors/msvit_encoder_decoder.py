"""EncoderDecoder that trains the MSViT gate with a gate loss and reports what the gate did."""
from typing import Optional

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ..builder import build_component
from ..gate_stats import attach_cost, gate_loss_and_stats


def input_normalisation(data_preprocessor) -> Optional[dict]:
    """mean / std / bgr_to_rgb of an mmseg or mmpretrain data preprocessor (None if it does not
    normalise)."""
    if not getattr(data_preprocessor, '_enable_normalize', False):
        return None
    return dict(mean=data_preprocessor.mean.flatten().tolist(),
                std=data_preprocessor.std.flatten().tolist(),
                bgr_to_rgb=bool(getattr(data_preprocessor, 'channel_conversion',
                                        getattr(data_preprocessor, 'to_rgb', False))))


@MODELS.register_module()
class MSViTEncoderDecoder(EncoderDecoder):
    """mmseg's :class:`EncoderDecoder` plus the gate loss of an MSViT backbone.

    Training: the decode (and auxiliary) losses as usual, plus ``gate_loss`` computed on the
    gate probabilities the backbone kept from this very forward (no second pass), logged under
    the loss's name (``loss_gate``). Each iteration also logs ``gate.fine_fraction`` (share of
    regions split into fine tokens in the batch) and ``gate.tokens_per_image`` (patch tokens per
    image). When the backbone's scale is forced (dense / all-coarse baselines) there are no gate
    probabilities and no gate loss.

    Inference (whole or slide): every predicted sample carries, in its metainfo,
    ``msvit_backbone_macs`` (backbone multiply-adds for the image, summed over slide windows, gate
    and pooling included), ``msvit_fine_fraction``, ``msvit_num_tokens`` and ``msvit_forwards``
    (backbone forwards, i.e. slide windows); the
    ``ComplexityMetric`` reports them beside mIoU.

    Args:
        gate_loss (dict, optional): e.g. ``dict(type='GBaSLoss', grid_size=(16, 16),
            target=0.5)``. None: no gate loss. Other arguments: as EncoderDecoder.
    """

    def __init__(self, *args, gate_loss: Optional[dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate_loss = build_component(gate_loss) if gate_loss is not None else None
        for name in ('last_gate_probs', 'start_recording', 'stop_recording'):
            if not hasattr(self.backbone, name):
                raise TypeError(f'MSViTEncoderDecoder: the backbone '
                                f'{type(self.backbone).__name__} is not an MSViT (no {name})')
        self.backbone.input_normalisation = input_normalisation(self.data_preprocessor)

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        losses = super().loss(inputs, data_samples)
        losses.update(gate_loss_and_stats(self.backbone, self.gate_loss))
        return losses

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None) -> SampleList:
        self.backbone.start_recording()
        try:
            results = super().predict(inputs, data_samples)
        finally:
            stats = self.backbone.stop_recording()
        return attach_cost(results, stats)
