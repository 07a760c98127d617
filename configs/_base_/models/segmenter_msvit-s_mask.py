# MSViT-S/16-32 + Segmenter mask transformer head, as mmseg's segmenter_vit-b16_mask.
backbone_embed_dims = 384
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
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
        out_indices=-1,
        final_norm=True,
        drop_path_rate=0.1,
        gate=dict(type='MixedScaleGate', hidden_dims=(256, 256), init_fine_fraction=0.9),
        gate_threshold=0.5),
    neck=dict(type='MixedScaleToDense'),
    decode_head=dict(
        type='SegmenterMaskTransformerHead',
        in_channels=384,
        channels=384,
        num_classes=150,
        num_layers=2,
        num_heads=6,
        embed_dims=384,
        dropout_ratio=0.0,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    gate_loss=dict(type='GBaSLoss', grid_size=(16, 16), target=0.5, hyper_std=0.1,
                   tau_weight=0.1, loss_weight=1.0, anneal_iters=8000),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(480, 480)))
