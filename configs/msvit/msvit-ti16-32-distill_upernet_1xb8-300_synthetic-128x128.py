# Recommended recipe, step 2 on the synthetic scenes (the configuration the evidence study
# measures as `recipe_mixed_head_inplace_contrast_shared0.25_dense_stats`, docs/study.md): the
# dense model of step 1 fine-tuned on mixed-scale tokens for 300 iterations in one stage,
# starting from its weights: each iteration trains the model's own dense pass and distils its
# mixed-scale pass from it.
#   python tools/train.py configs/msvit/demo_recipe_synthetic.py --work-dir work_dirs/demo_recipe \
#       --cfg-options load_from=work_dirs/demo_dense/iter_600.pth
# - training-free content gate (a region is scored by the variance of its 4 x 4 pixel averages
#   and of the pixels' standard deviation within each 4 x 4 cell: structure at 4 px and coarser
#   and the borders of textures, blind to grain that covers the region; structure_px=4,
#   contrast=True), budget mode: 42% of
#   the regions fine at evaluation (0.54x the dense backbone's GMACs), a budget drawn per batch
#   from 0.25-0.6 in training;
# - each coarse token gets a learned residual from its region's four fine patch embeddings and a
#   coarse-scale vector (MSViT coarse_detail / coarse_scale_embed), and the neck unpools it to its
#   2x2 cells with learned per-cell features (all three start at zero: the dense model's function
#   at the start);
# - distillation (DenseDistillLoss, teacher='self'): per-pixel KL to the logits of the model's own
#   dense pass (every region fine, trained with the task loss in the same iteration) plus its
#   dense feature maps at the four taps; no teacher file; the mixed pass sends a quarter of its
#   gradient into the weights the dense pass also uses, and BatchNorm running statistics are the
#   dense pass' own (shared_grad_scale=0.25, dense_running_stats=True), so every region fine is
#   the dense model (a frozen copy of load_from as teacher instead: teacher='checkpoint',
#   shared_grad_scale=1.0, dense_running_stats=False);
# - mixed-scale decoding: the neck's x4 and x2 levels and the UPerHead run coarse regions at half
#   resolution (neck coarse_reduction=2; whole model 0.58x the dense one's GMACs), trained so here.
_base_ = ['./vit-ti16-dense_upernet_1xb8-600_synthetic-128x128.py']
model = dict(
    backbone=dict(force_scale=None,
                  gate=dict(_delete_=True, type='ContentGate', structure_px=4, contrast=True),
                  fine_budget=0.42, train_budget_range=(0.25, 0.6),
                  coarse_detail=True, coarse_scale_embed=True),
    neck=dict(coarse_unpool=True, coarse_reduction=2),  # mixed-scale decoding
    # the mixed pass sends a quarter of its gradient into the weights the dense pass also uses,
    # and BatchNorm statistics come from the dense pass: budget 1.0 stays the dense model
    distill=dict(type='DenseDistillLoss', feature_weight=1.0, teacher='self',
                 shared_grad_scale=0.25, dense_running_stats=True))
optim_wrapper = dict(
    optimizer=dict(lr=0.0005),
    # the coarse-token embedding and the unpooling start at zero on a trained network: they
    # learn 10x faster
    paramwise_cfg=dict(custom_keys={'backbone.patch_embed.coarse_embed': dict(lr_mult=10.0),
                                    'neck.unpool': dict(lr_mult=10.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=300, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=300)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=150, max_keep_ckpts=1))
load_from = None  # the dense model of step 1 (required): --cfg-options load_from=...
