"""Registered model components of mmseg-msvit (mmseg's MODELS registry)."""
from .backbones import MSViT
from .features import MixedScaleFeatures
from .gates import MixedScaleGate
from .necks import MixedScaleToDense
from .tokenizer import MixedScaleTokenizer, coarsen

__all__ = [
    'MSViT', 'MixedScaleGate', 'MixedScaleToDense', 'MixedScaleFeatures', 'MixedScaleTokenizer',
    'coarsen'
]
