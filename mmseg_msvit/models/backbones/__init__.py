from .msvit import MSViT, load_timm_state_dict

__all__ = ['MSViT', 'load_timm_state_dict']
