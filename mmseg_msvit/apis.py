"""Inference helpers: a trained dense (or mixed-scale) segmentor as a mixed-scale one with the
training-free content gate, in one call.

    from mmseg.apis import inference_model
    from mmseg_msvit.apis import init_mixed_scale_model

    model = init_mixed_scale_model('configs/msvit/upernet_vit-s16-dense_ade20k.py',
                                   'work_dirs/dense/iter_160000.pth', fine_budget=0.42)
    result = inference_model(model, 'photo.jpg')
    result.msvit_fine_mask, result.msvit_backbone_macs   # where the fine tokens went, the cost

The content gate (``ContentGate``) has no parameters: each 32x32 region is scored by the pixel
energy its coarse token would lose, and the ``fine_budget`` share of regions with the highest
scores keeps fine tokens (budget mode). Any MSViT checkpoint works, dense ones included (a dense
config's ``force_scale='fine'`` is lifted). ``tools/test.py CONFIG CKPT --content-gate 0.42`` does
the same for an evaluation.
"""
from typing import Optional, Union

from mmengine.config import Config

__all__ = ['with_content_gate', 'init_mixed_scale_model']


def with_content_gate(cfg: Config, fine_budget: float) -> Config:
    """``cfg`` (an mmengine Config of an MSViT segmentor) changed in place to decide with the
    content gate at ``fine_budget`` (budget mode); gate losses, the gate probe and distillation,
    which only matter in training, are removed. Returns ``cfg``."""
    from .models.arguments import is_real
    if not is_real(fine_budget) or not 0 < fine_budget <= 1:
        raise ValueError('with_content_gate: fine_budget (--content-gate) must be a number in '
                         f'(0, 1], the share of regions kept fine, got {fine_budget!r}')
    backbone = cfg.model.get('backbone', {})
    if backbone.get('type') != 'MSViT':
        raise ValueError(f"with_content_gate: the config's backbone is {backbone.get('type')!r}, "
                         "not 'MSViT'; migrate an mmseg ViT config first (README, 'From an mmseg "
                         "ViT config')")
    backbone['gate'] = dict(type='ContentGate')
    backbone['force_scale'] = None
    backbone['fine_budget'] = float(fine_budget)
    backbone['train_budget_range'] = None
    backbone['gate_init'] = None
    for key in ('gate_loss', 'gate_probe', 'distill'):
        if key in cfg.model:
            cfg.model[key] = None
    if cfg.model.get('train_gate_only'):
        cfg.model['train_gate_only'] = False
    return cfg


def init_mixed_scale_model(config: Union[str, Config],
                           checkpoint: Optional[str] = None,
                           fine_budget: float = 0.42,
                           device: str = 'cpu',
                           cfg_options: Optional[dict] = None):
    """``mmseg.apis.init_model`` for a mixed-scale model with the content gate at
    ``fine_budget``: the model ``mmseg.apis.inference_model`` and ``MMSegInferencer`` take, whose
    predictions carry ``msvit_fine_mask`` and ``msvit_backbone_macs``."""
    import copy

    from mmseg.apis import init_model

    from .cli import load_config
    cfg = load_config(config, cfg_options) if isinstance(config, str) else copy.deepcopy(config)
    if cfg_options and not isinstance(config, str):
        cfg.merge_from_dict(cfg_options)
    with_content_gate(cfg, fine_budget)
    cfg.model.backbone.init_cfg = None  # the checkpoint holds the weights
    return init_model(cfg, checkpoint, device=device)
