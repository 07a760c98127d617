"""MAC counting for MSViT: the formula from the tokens actually used (a pure function of the
layout a forward returns), and mmengine's counter for the parts whose cost does not depend on the
gate (neck, decode head)."""
from .macs import (add_costs, backbone_macs, count_macs_with_mmengine, decode_macs,
                   dense_decode_macs, image_cost,
                   layout_macs, msvit_macs_from_tokens, parameter_counts, shape_costs,
                   transformer_layer_macs)

__all__ = [
    'backbone_macs', 'layout_macs', 'image_cost', 'add_costs', 'msvit_macs_from_tokens',
    'transformer_layer_macs', 'count_macs_with_mmengine', 'decode_macs', 'dense_decode_macs',
    'shape_costs',
    'parameter_counts'
]
