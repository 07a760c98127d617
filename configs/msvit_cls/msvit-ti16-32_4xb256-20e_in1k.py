# MSViT-Ti/16-32 on ImageNet-1k, from a local DeiT-Ti/16 checkpoint (see the -s config).
_base_ = ['./msvit-s16-32_4xb256-20e_in1k.py']
pretrained = 'pretrain/deit_tiny_patch16_224.pth'
model = dict(
    backbone=dict(arch='tiny', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    head=dict(in_channels=192),
    head_from_timm=pretrained)
