# MSViT-B/16-32 on ImageNet-1k, from a local DeiT-B/16 checkpoint (see the -s config).
_base_ = ['./msvit-s16-32_4xb256-20e_in1k.py']
pretrained = 'pretrain/deit_base_patch16_224.pth'
model = dict(
    backbone=dict(arch='base', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    head=dict(in_channels=768),
    head_from_timm=pretrained)
train_dataloader = dict(batch_size=64)
