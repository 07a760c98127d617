_base_ = ['./vit-s32-coarse_upernet_8xb2-160k_ade20k-512x512.py']
