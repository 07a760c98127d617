from .gate_maps import draw_gate_map

__all__ = ['draw_gate_map']
