# Recommended recipe, step 2 (ADE20K, UPerNet): the dense model of
# vit-s16-dense_upernet_8xb2-160k_ade20k-512x512.py (160k, step 1) fine-tuned on mixed-scale tokens
# for 40000 iterations in one stage, starting from its weights: each iteration trains the
# model's own dense pass and distils its mixed-scale pass from it (no frozen teacher). The
# same recipe as the synthetic demo's, which the evidence study measured (docs/study.md); not run
# on this dataset here (no GPU, no dataset): schedule and learning rate are scaled, not tuned.
#   python tools/train.py configs/msvit/vit-s16-dense_upernet_8xb2-160k_ade20k-512x512.py
#   python tools/train.py configs/msvit/msvit-s16-32-distill_upernet_8xb2-40k_ade20k-512x512.py \
#       --cfg-options load_from=<step 1's last checkpoint>
# Content gate (training-free; a region is scored by the variance of its 4 x 4 pixel averages
# and of their contrast, structure_px=4, contrast=True), 42% of the regions fine at
# evaluation, budgets 0.25-0.6 in training; coarse
# tokens with their region's detail (coarse_detail, coarse_scale_embed) and unpooled to their
# cells by the neck; DenseDistillLoss from the model's own dense pass (logits and dense feature
# maps, teacher='self'), the mixed pass' gradient into the shared weights x0.25 and BatchNorm
# running statistics from the dense pass (shared_grad_scale=0.25, dense_running_stats=True: the
# checkpoint's budget 1.0 is within 0.1 of a dense model trained as long in the study; a frozen
# copy of load_from as teacher instead: teacher='checkpoint', shared_grad_scale=1.0,
# dense_running_stats=False);
# mixed-scale decoding: the neck's x4 and x2 levels and the UPerHead run
# coarse regions at half resolution (neck coarse_reduction=2; the whole model at budget 0.42 is
# 157.6 of 275.6 GMACs, 0.57x: get_flops.py --shape 512 512), trained so in this step.
_base_ = ['./vit-s16-dense_upernet_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(force_scale=None,
                  gate=dict(_delete_=True, type='ContentGate', structure_px=4, contrast=True),
                  fine_budget=0.42, train_budget_range=(0.25, 0.6),
                  coarse_detail=True, coarse_scale_embed=True, init_cfg=None),
    neck=dict(coarse_unpool=True, coarse_reduction=2),  # mixed-scale decoding
    # the mixed pass sends a quarter of its gradient into the weights the dense pass also uses,
    # and BatchNorm statistics come from the dense pass: budget 1.0 stays the dense model
    distill=dict(type='DenseDistillLoss', feature_weight=1.0, teacher='self',
                 shared_grad_scale=0.25, dense_running_stats=True))
optim_wrapper = dict(
    optimizer=dict(lr=0.00002),  # a third of the dense recipe's 6e-5, as in the study
    paramwise_cfg=dict(custom_keys={'backbone.patch_embed.coarse_embed': dict(lr_mult=10.0),
                                    'neck.unpool': dict(lr_mult=10.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=40000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=8000)
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', by_epoch=False,
                                     interval=8000))
load_from = None  # step 1's checkpoint (required): --cfg-options load_from=...
