# Short name: the recommended recipe's step 2 on the synthetic scenes (needs load_from = step 1).
_base_ = ['./msvit-ti16-32-distill_upernet_1xb8-300_synthetic-128x128.py']
