"""MAC counting for MSViT (formula from the tokens actually used)."""
from .macs import backbone_macs, msvit_macs_from_tokens, transformer_layer_macs

__all__ = ['backbone_macs', 'msvit_macs_from_tokens', 'transformer_layer_macs']
