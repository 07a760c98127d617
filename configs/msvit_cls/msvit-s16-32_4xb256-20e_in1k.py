# The paper's gate training on ImageNet-1k: start from a pretrained DeiT-S/16 (a local timm file;
# weights cannot be downloaded by this project), train gate + backbone for 20 epochs with GBaS
# (fine fraction annealed 1.0 -> target), mmpretrain's DeiT pipeline (RandomResizedCrop 224, flip,
# RandAugment, RandomErasing, Mixup/CutMix). Validation: top-1/top-5 and GMACs per image.
_base_ = [
    '../_base_/models/msvit-s_cls.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/default_runtime.py'
]
custom_imports = dict(imports=['mmseg_msvit'], allow_failed_imports=False)
pretrained = 'pretrain/deit_small_patch16_224.pth'
model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    head_from_timm=pretrained,
    gate_loss=dict(target=0.5))
train_dataloader = dict(batch_size=256)
val_evaluator = [dict(type='Accuracy', topk=(1, 5)), dict(type='ComplexityMetric')]
test_evaluator = val_evaluator
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=5e-5 * 1024 / 512, weight_decay=0.05, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={
            '.cls_token': dict(decay_mult=0.0),
            '.pos_embed': dict(decay_mult=0.0),
            'gate_loss': dict(decay_mult=0.0, lr_mult=100.0),
        }),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=20)
]
train_cfg = dict(by_epoch=True, max_epochs=20, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024)
# reliability hooks (as configs/_base_/default_runtime.py): atomic checkpoints that are never
# lost, exact resume, checkpoints checked on load, a stop at the first non-finite loss
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
custom_hooks = [dict(type='ExactResumeHook'), dict(type='CheckpointCheckHook'),
                dict(type='CustomKeysCheckHook'), dict(type='FiniteLossHook'),
                dict(type='TrainingTimeHook')]
