from .msvit_encoder_decoder import MSViTEncoderDecoder

__all__ = ['MSViTEncoderDecoder']
