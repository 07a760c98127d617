_base_ = ['./msvit-s16-32_segmenter-linear_8xb1-160k_ade20k-512x512.py']
