# MSViT-S/16-32 + UPerNet on Cityscapes with the paper's recipe (MLP gate trained with GBaS from a pretrained
# ViT); it loses to plain downscaling in the evidence study (docs/study.md).
_base_ = ['./msvit-s16-32_upernet_8xb2-80k_cityscapes-512x1024.py']
