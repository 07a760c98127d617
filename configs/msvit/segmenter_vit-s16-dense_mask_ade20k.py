_base_ = ['./vit-s16-dense_segmenter-mask_8xb1-160k_ade20k-512x512.py']
