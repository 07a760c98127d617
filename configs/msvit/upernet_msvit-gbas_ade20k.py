# MSViT-S/16-32 + UPerNet on ADE20K with the paper's recipe (MLP gate trained with GBaS from a pretrained
# ViT); it loses to plain downscaling in the evidence study (docs/study.md).
_base_ = ['./msvit-s16-32_upernet_8xb2-160k_ade20k-512x512.py']
