"""The evidence study's configs (``tools/analysis_tools/msvit_study.py``): the mmengine config
of one training run, built by mutating a setting's demo config (``seg_config`` and
``cls_config`` of :data:`~.runs.SETTINGS`, read from the source checkout) with the options of
the run in :func:`~.runs.runs`; built in Python, nothing generated is run.

``setting`` is a name in :data:`~.runs.SETTINGS` or a setting's dict (with its ``--set``
overrides).
"""
import os.path as osp

from .runs import (CONTENT_PRIOR_GATE, REPO, final_checkpoint, gate_file, resolve_setting,
                   run_dir, runs)


def seg_config(setting, run: str, seed: int, out_dir: str):
    """The mmengine Config of one segmentation training run (``run`` of :func:`~.runs.runs`)."""
    from mmengine.config import Config
    setting = resolve_setting(setting)
    spec = runs(setting)[run]
    cfg = Config.fromfile(osp.join(REPO, setting['seg_config']))
    crop, size = setting['crop'], setting['data']['img_size']
    iters = spec.get('iters', setting['fine_iters'])
    data_root = osp.join(out_dir, 'data', 'seg')
    train_scale = spec.get('train_scale', 1.0)
    scaled = int(round(size * train_scale))
    cfg.train_dataloader.dataset.data_root = data_root
    cfg.val_dataloader.dataset.data_root = data_root
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_dataloader.batch_size = setting['batch_size']
    cfg.train_dataloader.num_workers = setting['num_workers']
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.persistent_workers = False
    cfg.val_dataloader.num_workers = 0
    # the same scale augmentation for every model (0.5-1.25x), so the resolution curve is fair
    cfg.train_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomResize', scale=(scaled, scaled), ratio_range=(0.5, 1.25),
             keep_ratio=True),
        dict(type='RandomCrop', crop_size=(crop, crop), cat_max_ratio=0.75),
        dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
    cfg.val_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='Resize', scale=(size, size), keep_ratio=True),
        dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
    model = cfg.model
    model.data_preprocessor.size = (crop, crop)
    model.backbone.arch = setting['arch']
    model.backbone.img_size = (crop, crop)
    model.neck.in_channels = [setting['width']] * 4
    model.neck.out_channels = setting['neck_width']
    model.decode_head.in_channels = [setting['neck_width']] * 4
    model.decode_head.channels = setting['neck_width']
    model.decode_head.sampler.min_kept = setting['min_kept']
    model.auxiliary_head.in_channels = setting['neck_width']
    if setting['head'] in ('linear', 'mask'):
        # Segmenter's decoders read the last tap's dense map (the 1/16 grid), no auxiliary
        # head: linear is a 1x1 classifier, so the backbone is nearly all of the model's cost;
        # mask is two transformer layers over the grid's tokens and one per class (a UPerNet
        # head's cost is mostly its own)
        model.backbone.out_indices = (-1, )
        model.backbone.final_norm = True
        model.neck = dict(type='MixedScaleToDense', in_channels=setting['width'], num_taps=1)
        common = dict(in_channels=setting['width'], channels=setting['width'],
                      num_classes=model.decode_head.num_classes, dropout_ratio=0.0,
                      align_corners=False, sampler=model.decode_head.sampler,
                      loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                       loss_weight=1.0))
        if setting['head'] == 'linear':
            model.decode_head = dict(type='FCNHead', in_index=0, num_convs=0,
                                     concat_input=False, **common)
        else:  # as configs/_base_/models/segmenter_msvit-s_mask.py, heads of 64 channels
            model.decode_head = dict(type='SegmenterMaskTransformerHead', num_layers=2,
                                     num_heads=setting['width'] // 64,
                                     embed_dims=setting['width'], **common)
        model.auxiliary_head = None
    elif setting['head'] != 'upernet':
        raise ValueError(f"msvit_study: head must be 'upernet', 'linear' or 'mask', got "
                         f"{setting['head']!r}")
    model.backbone.force_scale = spec.get('force_scale')
    for key in ('gate', 'fine_budget', 'train_budget_range', 'coarse_detail',
                'coarse_scale_embed'):
        if key in spec:
            model.backbone[key] = spec[key]
    if spec.get('gate_init'):  # the classifier's kind of gate, which the file fills
        model.backbone.gate = transferred_gate(setting)
    if spec.get('coarse_unpool'):
        model.neck.coarse_unpool = True
    for key in ('coarse_reduction', 'decode_regions', 'mixed_scales'):
        if key in spec:
            model.neck[key] = spec[key]
    if spec.get('distill'):
        model.distill = dict(spec['distill'])
        if model.distill.get('teacher', 'checkpoint') == 'checkpoint':
            # the teacher: the dense model this run starts from, frozen
            model.distill['teacher_checkpoint'] = final_checkpoint(out_dir, seed, spec['start'],
                                                                   setting)
    if 'gate_loss' in spec and spec['gate_loss'] is None:
        model.gate_loss = None
    elif model.get('gate_loss') is not None:
        model.gate_loss.target = setting['budget']
        model.gate_loss.anneal_iters = iters // 2
    if 'gate_probe' in spec and spec['gate_probe'] is None:
        model.gate_probe = None
    elif model.get('gate_probe') is not None:
        model.gate_probe.num_images = setting['probe_images']
    if spec.get('gate_init'):
        model.backbone.gate_init = dict(checkpoint=gate_file(out_dir, seed), freeze=False)
    cfg.work_dir = run_dir(out_dir, seed, run)
    # an interrupted run continues from its own last checkpoint; a new one starts from dense_pre
    # (mmengine resumes FROM load_from when both are set, so only one of them is)
    cfg.resume = osp.exists(osp.join(cfg.work_dir, 'last_checkpoint'))
    if spec['start'] != 'scratch' and not cfg.resume:
        cfg.load_from = final_checkpoint(out_dir, seed, spec['start'], setting)
    if spec.get('train_gate_only'):
        model.train_gate_only = True
    lr = setting['lr'] if spec['start'] == 'scratch' else \
        setting['gate_lr'] if spec.get('train_gate_only') else setting['fine_lr']
    cfg.optim_wrapper.optimizer.lr = lr
    if spec['start'] != 'scratch' and not spec.get('train_gate_only'):
        # a fresh gate on a trained network: without a higher learning rate it cannot follow
        # the GBaS target within the fine-tuning schedule
        cfg.optim_wrapper.paramwise_cfg.custom_keys['backbone.gate'] = dict(
            lr_mult=setting['gate_lr_mult'], decay_mult=0.0)
    if spec.get('new_lr_mult'):
        # parts that start at zero on a trained network learn faster
        new_parts = [('backbone.patch_embed.coarse_embed', spec.get('coarse_detail') or
                      spec.get('coarse_scale_embed')), ('neck.unpool', spec.get('coarse_unpool'))]
        for key, present in new_parts:
            if present:
                cfg.optim_wrapper.paramwise_cfg.custom_keys[key] = dict(
                    lr_mult=spec['new_lr_mult'])
    warmup = max(1, iters // 10)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup),
        dict(type='PolyLR', eta_min=0.0, power=1.0, begin=warmup, end=iters, by_epoch=False)]
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    cfg.val_cfg = None
    cfg.val_dataloader = None
    cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = dict(type='SafeCheckpointHook', by_epoch=False,
                                        interval=max(1, iters // 2), max_keep_ckpts=1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=max(1, iters // 4))
    cfg.randomness = dict(seed=seed)
    return cfg


def transferred_gate(setting) -> dict:
    """The gate config of the classifier and of the runs that load its gate (``cls_gate``):
    'mlp', the classification config's own gate; 'content_prior', :data:`CONTENT_PRIOR_GATE`."""
    from mmengine.config import Config
    kind = setting['cls_gate']
    if kind == 'content_prior':
        return dict(CONTENT_PRIOR_GATE)
    if kind != 'mlp':
        raise ValueError("msvit_study: cls_gate must be one of ['content_prior', 'mlp'], got "
                         f'{kind!r}')
    return Config.fromfile(osp.join(REPO, setting['cls_config'])).model.backbone.gate.to_dict()


def cls_config(setting, seed: int, out_dir: str):
    """The mmengine Config of the classifier whose gate the ``gate_init`` runs start from."""
    from mmengine.config import Config
    setting = resolve_setting(setting)
    cfg = Config.fromfile(osp.join(REPO, setting['cls_config']))
    iters = setting['cls_iters']
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = osp.join(out_dir, 'data', 'cls')
        loader.num_workers = 0
        loader.persistent_workers = False
    cfg.model.backbone.img_size = setting['cls_data']['img_size']
    cfg.model.backbone.gate = transferred_gate(setting)
    warmup = max(1, min(20, iters // 5))
    cfg.param_scheduler[0].end = warmup
    cfg.param_scheduler[-1].begin = warmup
    cfg.param_scheduler[-1].end = iters
    cfg.train_cfg = dict(by_epoch=False, max_iters=iters, val_interval=iters + 1)
    cfg.val_cfg = None
    cfg.val_dataloader = None
    cfg.val_evaluator = None
    cfg.test_dataloader = None
    cfg.test_evaluator = None
    cfg.test_cfg = None
    cfg.default_hooks.checkpoint.interval = iters
    cfg.randomness = dict(seed=seed)
    cfg.work_dir = run_dir(out_dir, seed, 'cls')
    cfg.resume = osp.exists(osp.join(cfg.work_dir, 'last_checkpoint'))
    return cfg
