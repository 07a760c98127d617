"""Inference helpers: a trained dense (or mixed-scale) segmentor as a mixed-scale one with the
training-free content gate, in one call.

    from mmseg.apis import inference_model
    from mmseg_msvit.apis import init_mixed_scale_model

    model = init_mixed_scale_model('configs/msvit/upernet_vit-s16-dense_ade20k.py',
                                   'work_dirs/dense/iter_160000.pth', fine_budget=0.42)
    result = inference_model(model, 'photo.jpg')
    result.msvit_fine_mask, result.msvit_backbone_macs   # where the fine tokens went, the cost

The content gate (``ContentGate``) has no parameters: each 32x32 region is scored by the pixel
energy its coarse token would lose (or, where the config's own gate is a content gate, by that
gate's score: structure, contrast), and the ``fine_budget`` share of regions with the highest
scores keeps fine tokens (budget mode). Any MSViT checkpoint works, dense ones included (a dense
config's ``force_scale='fine'`` is lifted). ``tools/test.py CONFIG CKPT --content-gate 0.42`` does
the same for an evaluation.
"""
from typing import Optional, Union

from mmengine.config import Config

__all__ = ['with_content_gate', 'init_mixed_scale_model', 'init_from_mmseg']


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
                         "not 'MSViT'. For a model trained with mmseg, give the config that "
                         'tools/model_converters/mmseg2msvit.py wrote beside the converted '
                         'checkpoint, or convert with it (or mmseg_msvit.apis.init_from_mmseg); '
                         "to train MSViT from an mmseg ViT config, see README 'From an mmseg ViT "
                         "config'")
    gate = backbone.get('gate') or {}
    # a config whose own gate is the content gate keeps it, score options and all
    backbone['gate'] = dict(gate) if gate.get('type') == 'ContentGate' else \
        dict(type='ContentGate')
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
    predictions carry ``msvit_fine_mask`` and ``msvit_backbone_macs``.

    The checkpoint must cover the model and hold nothing it lacks
    (:func:`mmseg_msvit.models.checkpoints.load_model_weights`): a backbone alone, a gate file or
    an mmseg segmentor's checkpoint is refused with what the file is and the converter to use,
    never run with random weights."""
    import copy

    from .cli import load_config
    cfg = load_config(config, cfg_options) if isinstance(config, str) else copy.deepcopy(config)
    if cfg_options and not isinstance(config, str):
        cfg.merge_from_dict(cfg_options)
    with_content_gate(cfg, fine_budget)
    return _init_checked(cfg, checkpoint, device)


def init_from_mmseg(config: Union[str, Config], checkpoint: str, fine_budget: float = 0.42,
                    device: str = 'cpu', mixed_decoding: bool = False):
    """A trained mmseg ViT segmentor (its config and checkpoint, as trained with mmseg's own
    ``EncoderDecoder``, ``VisionTransformer``, ``MultiLevelNeck`` / no neck and any heads) as a
    mixed-scale model with the content gate at ``fine_budget``, converted whole in one call
    (:mod:`mmseg_msvit.from_mmseg`); ``fine_budget=1.0`` computes what mmseg's model did.
    ``mixed_decoding``: also run the neck's finer levels and a UPerHead at half resolution on
    coarse regions (not trained for it: it costs accuracy until fine-tuned, docs/study.md).
    ``tools/model_converters/mmseg2msvit.py`` writes the same as a config and a checkpoint."""
    from .from_mmseg import convert_mmseg_model
    cfg, converted = convert_mmseg_model(config, checkpoint, fine_budget, mixed_decoding)
    return _init_checked(cfg, checkpoint, device, converted)


def _init_checked(cfg: Config, checkpoint: Optional[str], device: str,
                  loaded: Optional[dict] = None):
    """mmseg's ``init_model`` without the checkpoint, then the checkpoint (``loaded``, or read
    from ``checkpoint``) through :func:`~mmseg_msvit.models.checkpoints.load_model_weights` and
    its ``dataset_meta`` as mmseg's ``init_model`` takes it."""
    from mmseg.apis import init_model

    from .models.checkpoints import load_model_weights
    cfg.model.backbone.init_cfg = None  # the checkpoint holds the weights
    model = init_model(cfg, None, device='cpu')
    if checkpoint is not None:
        loaded = load_model_weights(model, checkpoint, loaded)
        model.dataset_meta = _dataset_meta(loaded, model)
    return model.to(device).eval()


def _dataset_meta(checkpoint: dict, model) -> dict:
    """Classes and palette as mmseg's ``init_model`` reads them: the checkpoint's
    ``dataset_meta`` (mmseg 1.x) or ``CLASSES``/``PALETTE`` (0.x), else the first dataset with as
    many classes as the decode head (with mmseg's warning)."""
    import warnings

    from mmseg.utils import dataset_aliases, get_classes, get_palette
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    if isinstance(meta.get('dataset_meta'), dict):
        return meta['dataset_meta']
    if 'CLASSES' in meta and 'PALETTE' in meta:
        return {'classes': meta['CLASSES'], 'palette': meta['PALETTE']}
    num_classes = model.decode_head.num_classes
    name = next((n for n in dataset_aliases if len(get_classes(n)) == num_classes), None)
    warnings.warn('the checkpoint has no dataset_meta (class names); using '
                  f"{name or 'cityscapes'}'s for {num_classes} classes")
    name = name or 'cityscapes'
    return {'classes': get_classes(name), 'palette': get_palette(name)}
