# MSViT-S/16-32 + UPerNet, as mmseg's ViT/DeiT UPerNet (upernet_vit-b16_ln_mln) with the mixed-scale
# backbone: four taps scattered back to dense maps and resized (x4, x2, x1, x0.5).
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='MSViTEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='MSViT',
        arch='small',
        img_size=(512, 512),
        fine_patch_size=16,
        coarse_patch_size=32,
        out_indices=(2, 5, 8, 11),
        final_norm=False,
        drop_path_rate=0.1,
        gate=dict(type='MixedScaleGate', hidden_dims=(256, 256), init_fine_fraction=0.9),
        gate_threshold=0.5),
    neck=dict(
        type='MixedScaleToDense',
        in_channels=[384, 384, 384, 384],
        out_channels=384,
        scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='MixedScaleUPerHead',  # mmseg's UPerHead, which can also read mixed levels
        in_channels=[384, 384, 384, 384],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    # fine fraction annealed from 1.0 (the pretrained ViT's regime) to the target
    gate_loss=dict(type='GBaSLoss', grid_size=(16, 16), target=0.5, hyper_std=0.1,
                   tau_weight=0.1, loss_weight=1.0, anneal_iters=8000),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
