from .msvit_encoder_decoder import MSViTEncoderDecoder
from .msvit_tta import MSViTSegTTAModel

__all__ = ['MSViTEncoderDecoder', 'MSViTSegTTAModel']
