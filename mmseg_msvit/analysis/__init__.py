"""MAC counting for MSViT: the formula from the tokens actually used, and mmengine's counter for
the parts whose cost does not depend on the gate (neck, decode head)."""
from .macs import (backbone_macs, count_macs_with_mmengine, decode_macs, msvit_macs_from_tokens,
                   transformer_layer_macs)

__all__ = [
    'backbone_macs', 'msvit_macs_from_tokens', 'transformer_layer_macs',
    'count_macs_with_mmengine', 'decode_macs'
]
