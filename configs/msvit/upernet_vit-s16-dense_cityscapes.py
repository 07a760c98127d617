_base_ = ['./vit-s16-dense_upernet_8xb2-80k_cityscapes-512x1024.py']
