# The name users type: MSViT-S/16-32 + UPerNet on Cityscapes (see the long-named config).
_base_ = ['./msvit-s16-32_upernet_8xb2-80k_cityscapes-512x1024.py']
