# Recommended recipe, step 1 on the synthetic scenes: a dense ViT-Ti/16 (every region fine) + a
# light UPerNet, 600 iterations of batch 8 from scratch, with the evidence study's augmentation
# (random resize 0.5-1.25x, 128 px crops). Step 2 fine-tunes it on mixed-scale tokens:
#   python tools/train.py configs/msvit/demo_dense_synthetic.py --work-dir work_dirs/demo_dense
#   python tools/train.py configs/msvit/demo_recipe_synthetic.py --work-dir work_dirs/demo_recipe \
#       --cfg-options load_from=work_dirs/demo_dense/iter_600.pth
_base_ = ['./msvit-ti16-32_upernet_1xb8-400_synthetic-128x128.py']
# no gate parameters: the parameter-free content gate, which a forced scale never runs, so a
# dense checkpoint holds no gate weights (tools/test.py --content-gate decides with it)
model = dict(backbone=dict(force_scale='fine', gate=dict(_delete_=True, type='ContentGate')),
             gate_loss=None, gate_probe=None)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.5, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(128, 128), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=60),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=60, end=600, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=600, val_interval=600)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=300, max_keep_ckpts=1))
