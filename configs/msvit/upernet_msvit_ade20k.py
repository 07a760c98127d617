# The name users type: MSViT-S/16-32 + UPerNet on ADE20K (see the long-named config).
_base_ = ['./msvit-s16-32_upernet_8xb2-160k_ade20k-512x512.py']
