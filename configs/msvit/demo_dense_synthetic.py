# Short name: the recommended recipe's step 1 on the synthetic scenes (dense ViT-Ti + UPerNet).
_base_ = ['./vit-ti16-dense_upernet_1xb8-600_synthetic-128x128.py']
