_base_ = ['./msvit-ti16-32_1xb32-150it_synthetic-cls-96px.py']
