"""Registered model components of mmseg-msvit (mmseg's MODELS registry)."""
from .backbones import MSViT
from .classifiers import MSViTImageClassifier
from .features import MixedScaleFeatures, MixedScaleMaps, layout_of
from .gate_training import GateProbe
from .gates import ContentGate, MixedScaleGate, RandomGate
from .coarse_embed import CoarseTokenEmbed
from .decode_heads import MixedScaleUPerHead
from .losses import BaSLoss, DenseDistillLoss, GBaSLoss, L0GateLoss
from .mixed_maps import MixedScaleMap, RegionBlocks
from .necks import MixedScaleToDense
from .policy import ScaleDecision, ScalePolicy
from .segmentors import MSViTEncoderDecoder
from .tokenizer import MixedScaleEmbed, MixedScaleLayout, coarsen

__all__ = [
    'MSViT', 'MixedScaleGate', 'ContentGate', 'RandomGate', 'MixedScaleToDense',
    'MixedScaleFeatures', 'MixedScaleMaps', 'layout_of', 'MixedScaleEmbed',
    'MixedScaleLayout', 'coarsen', 'GateProbe',
    'GBaSLoss', 'BaSLoss', 'L0GateLoss', 'MSViTEncoderDecoder', 'MSViTImageClassifier',
    'CoarseTokenEmbed', 'DenseDistillLoss', 'ScalePolicy', 'ScaleDecision', 'MixedScaleUPerHead',
    'MixedScaleMap', 'RegionBlocks'
]
