# MSViT-S/16-32 + Segmenter mask transformer on ADE20K: mmseg's Segmenter recipe
# (segmenter_vit-s_mask_8xb1-160k_ade20k-512x512: SGD lr 1e-3, poly, batch 8 x 1, slide test).
_base_ = [
    '../_base_/models/segmenter_msvit-s_mask.py', '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py'
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/vit_small_patch16_384.pth')))
optimizer = dict(lr=0.001, weight_decay=0.0)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer,
                     paramwise_cfg=dict(custom_keys={'gate_loss': dict(decay_mult=0., lr_mult=10.)}))
train_dataloader = dict(batch_size=1)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))  # atomic, never lost
