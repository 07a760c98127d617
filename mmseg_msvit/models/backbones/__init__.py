from .msvit import MSViT

__all__ = ['MSViT']
