# mmseg's ViT-UPerNet optimisation: AdamW 6e-5, linear warm-up 1500 iters, poly decay, 160k iters.
# No weight decay on positions, CLS, norms and the GBaS prior parameters.
_base_ = ['mmseg::_base_/schedules/schedule_160k.py']
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            # GBaS prior parameters (a few hundred scalars) must track the annealed target
            'gate_loss': dict(decay_mult=0., lr_mult=100.),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]
# checkpoints written atomically; the oldest kept one is deleted only after the new one is on disk
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
