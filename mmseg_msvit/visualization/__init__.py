from .gate_maps import draw_gate_map, present_classes, tint_colours

__all__ = ['draw_gate_map', 'present_classes', 'tint_colours']
