# Demo: gate + MSViT-Ti trained from scratch on the synthetic ImageNet-layout set (5 classes, 96 px;
# 'dots' and 'striped_patch' differ from 'plain' only in small details). Same input
# normalisation as the segmentation demo, so its gate transfers there. Minutes on a CPU.
_base_ = ['../_base_/models/msvit-s_cls.py', 'mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmseg_msvit'], allow_failed_imports=False)
classes = ('plain', 'dots', 'striped_patch', 'big_disc', 'cross')
data_preprocessor = dict(
    num_classes=5, mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='tiny', img_size=96, drop_path_rate=0.0),
    head=dict(num_classes=5, in_channels=192,
              loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)),
    gate_loss=dict(grid_size=(3, 3), target=0.5, anneal_iters=50, loss_weight=2.0),
    train_cfg=None)
data_root = 'data/synthetic_imagenet'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs')
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32, num_workers=2, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train',
                 metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32, num_workers=2, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='val',
                 metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [dict(type='Accuracy', topk=(1, )), dict(type='ComplexityMetric')]
test_evaluator = val_evaluator
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'gate_loss': dict(decay_mult=0.0, lr_mult=30.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin=20, end=150)
]
train_cfg = dict(by_epoch=False, max_iters=150, val_interval=150)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=150, max_keep_ckpts=1))
# see configs/_base_/default_runtime.py
custom_hooks = [dict(type='ExactResumeHook'), dict(type='CheckpointCheckHook'),
                dict(type='CustomKeysCheckHook'), dict(type='FiniteLossHook'),
                dict(type='TrainingTimeHook')]
randomness = dict(seed=0)
