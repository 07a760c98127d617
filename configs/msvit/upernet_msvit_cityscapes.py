# The name users type: MSViT-S/16-32 + UPerNet on Cityscapes, the recommended recipe's step 2 (fine-tunes the
# dense model of step 1 on mixed-scale tokens; needs load_from, see the long-named config).
_base_ = ['./msvit-s16-32-distill_upernet_8xb2-20k_cityscapes-512x1024.py']
