from .mixed_scale_to_dense import MixedScaleToDense

__all__ = ['MixedScaleToDense']
