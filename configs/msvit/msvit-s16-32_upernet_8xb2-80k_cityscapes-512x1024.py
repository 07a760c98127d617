# MSViT-S/16-32 + UPerNet on Cityscapes: 512x1024 crops, slide inference (512x1024 windows,
# stride 341), 80k iterations. The GBaS grid follows the crop: 16 x 32 coarse cells.
_base_ = [
    '../_base_/models/upernet_msvit-s.py', '../_base_/datasets/cityscapes.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k_adamw.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        img_size=(512, 1024),
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/deit_small_patch16_224.pth')),
    decode_head=dict(num_classes=19),
    auxiliary_head=dict(num_classes=19),
    gate_loss=dict(grid_size=(16, 32)),
    test_cfg=dict(mode='slide', crop_size=(512, 1024), stride=(341, 341)))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=80000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=8000))
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
