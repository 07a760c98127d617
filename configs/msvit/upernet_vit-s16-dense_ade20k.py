_base_ = ['./vit-s16-dense_upernet_8xb2-160k_ade20k-512x512.py']
