# MSViT-S/16-32 classifier (mmpretrain): CLS token -> ViT classification head, GBaS on the gate.
model = dict(
    type='MSViTImageClassifier',
    backbone=dict(
        type='MSViT',
        arch='small',
        img_size=224,
        fine_patch_size=16,
        coarse_patch_size=32,
        out_indices=-1,
        final_norm=True,
        drop_path_rate=0.1,
        gate=dict(type='MixedScaleGate', hidden_dims=(256, 256), init_fine_fraction=0.9),
        gate_threshold=0.5),
    neck=None,
    head=dict(
        type='VisionTransformerClsHead',
        num_classes=1000,
        in_channels=384,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
    gate_loss=dict(type='GBaSLoss', grid_size=(7, 7), target=0.5, hyper_std=0.1,
                   tau_weight=0.1, loss_weight=1.0, anneal_iters=5000),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
