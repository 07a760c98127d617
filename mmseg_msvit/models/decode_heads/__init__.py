from .mixed_scale_uper_head import MixedScaleUPerHead

__all__ = ['MixedScaleUPerHead']
