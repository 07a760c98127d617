# Short name for the demo config.
_base_ = ['./msvit-ti16-32_upernet_1xb8-400_synthetic-128x128.py']
