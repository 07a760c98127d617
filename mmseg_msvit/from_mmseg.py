"""A trained mmseg ViT segmentor as a mixed-scale one: its config and its checkpoint, converted
whole (backbone, neck, decode and auxiliary heads), in one call.

    from mmseg_msvit.apis import init_from_mmseg
    model = init_from_mmseg('vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py',
                            'upernet_deit-s16.pth', fine_budget=0.42)

or, writing a config and a checkpoint that every tool (``tools/test.py``, the inference APIs,
``load_from`` and the teacher of the recipe's step 2) takes:

    python tools/model_converters/mmseg2msvit.py MMSEG_CONFIG MMSEG_CKPT OUT_DIR

What changes: ``EncoderDecoder`` -> ``MSViTEncoderDecoder``; mmseg's ``VisionTransformer`` ->
``MSViT`` with the same architecture (its arguments and mmseg's defaults, LayerNorm eps and patch
bias included) and the training-free content gate at ``fine_budget``; ``neck=None`` ->
``MixedScaleToDense()`` (dense maps at the token grid, what mmseg's ViT hands its head), mmseg's
``MultiLevelNeck`` -> ``MixedScaleToDense`` with its scales, ``UPerHead`` -> ``MixedScaleUPerHead``
(the same weights; with ``mixed_decoding=True`` the neck's finer levels and the head run coarse
regions at half resolution). Every other head and every other setting is kept. The weights: the
backbone's renamed to timm's names (:func:`mmseg_msvit.models.checkpoints.to_timm_vit`), the
neck's ``MultiLevelNeck`` names to ``MixedScaleToDense``'s, the heads' unchanged. With every region
fine the converted model computes what mmseg's did (tested).
"""
import copy
import inspect
from typing import Dict, Optional, Tuple, Union

import torch
from mmengine.config import Config, ConfigDict

__all__ = ['mixed_scale_config', 'mixed_scale_state_dict', 'convert_mmseg_model']

#: mmseg VisionTransformer arguments MSViT has no name for, at the one value it implements
_FIXED = {'out_origin': False, 'num_fcs': 2}
#: carried over under the same name. The other mmseg VisionTransformer arguments have nothing to
#: carry over: the weights come from the checkpoint (pretrained, init_cfg), patch_pad only
#: matters for inputs that are not a multiple of the patch (MSViT pads them), frozen_exclude only
#: with frozen stages
_SAME = ('img_size', 'in_channels', 'mlp_ratio', 'out_indices', 'qkv_bias', 'drop_rate',
         'attn_drop_rate', 'drop_path_rate', 'final_norm', 'with_cp', 'patch_bias')


def _mmseg_args(cfg: dict, cls, what: str, accepted: Optional[str] = None) -> dict:
    """The arguments of an mmseg component config of ``cls`` (its ``type`` checked), mmseg's
    defaults filled in for those it leaves out; unknown names refused."""
    given = cfg.to_dict() if isinstance(cfg, ConfigDict) else copy.deepcopy(cfg)
    kind = given.pop('type', None)
    if kind not in (cls.__name__, f'mmseg.{cls.__name__}'):
        raise ValueError(f"mixed_scale_config: the {what} is {kind!r}; only mmseg's "
                         f'{accepted or cls.__name__} is converted')
    parameters = inspect.signature(cls.__init__).parameters
    defaults = {name: p.default for name, p in parameters.items()
                if p.default is not inspect.Parameter.empty}
    unknown = sorted(set(given) - set(parameters) - {'self'})
    if unknown:
        raise ValueError(f'mixed_scale_config: {what} arguments {unknown} are not mmseg '
                         f'{cls.__name__} arguments')
    return {**defaults, **given}


def _backbone(mmseg: dict) -> dict:
    from mmseg.models.backbones import VisionTransformer

    from .models.arguments import MMSEG_VIT_ACCEPTED, translate_mmseg_vit_args
    args = _mmseg_args(mmseg, VisionTransformer, 'backbone')
    for name, value in _FIXED.items():
        if args[name] != value:
            raise ValueError(f'mixed_scale_config: the backbone has {name}={args[name]!r}; MSViT '
                             f'implements only {name}={value!r}, so this model cannot be '
                             'converted')
    # MSViT's own translation of mmseg names checks and maps these
    ours = translate_mmseg_vit_args({name: args[name] for name in MMSEG_VIT_ACCEPTED}, {})
    patch = ours['fine_patch_size']
    if not isinstance(patch, int):
        raise ValueError(f'mixed_scale_config: backbone patch_size must be an int, got {patch!r}')
    out = dict(type='MSViT',
               arch=dict(embed_dims=args['embed_dims'], depth=ours['depth'],
                         num_heads=args['num_heads']),
               fine_patch_size=patch, coarse_patch_size=2 * patch, norm_eps=ours['norm_eps'],
               pos_embed_antialias=False,  # mmseg resizes its position table without it
               init_cfg=None)
    if not ours['with_cls_token']:
        out['with_cls_token'] = False  # an mmseg name MSViT takes
    out.update({name: args[name] for name in _SAME})
    return out


def _neck(mmseg: Optional[dict], mixed_decoding: bool) -> dict:
    if mmseg is None:
        if mixed_decoding:
            raise ValueError('mixed_scale_config: mixed_decoding needs levels finer than the '
                             "tokens, but the model has neck=None (its head reads the token "
                             'grid): convert without it')
        return dict(type='MixedScaleToDense')
    from mmseg.models.necks import MultiLevelNeck
    args = _mmseg_args(mmseg, MultiLevelNeck, 'neck', 'MultiLevelNeck or no neck')
    out = dict(type='MixedScaleToDense', in_channels=list(args['in_channels']),
               out_channels=args['out_channels'], scales=list(args['scales']),
               norm_cfg=args['norm_cfg'], act_cfg=args['act_cfg'])
    if mixed_decoding:
        out['coarse_reduction'] = 2
    return out


def mixed_scale_config(cfg: Config, fine_budget: float = 0.42,
                       mixed_decoding: bool = False) -> Config:
    """A copy of ``cfg`` (an mmseg ``EncoderDecoder`` config with a ``VisionTransformer``
    backbone) as an MSViT segmentor with the content gate at ``fine_budget``, the same
    architecture otherwise (module docstring). Anything it cannot express is refused, naming the
    setting."""
    from .apis import with_content_gate
    cfg = copy.deepcopy(cfg)
    model = cfg.get('model')
    if not isinstance(model, dict):
        raise ValueError('mixed_scale_config: the config has no model dict')
    if model.get('type') == 'MSViTEncoderDecoder':
        raise ValueError('mixed_scale_config: this config is already a mixed-scale model '
                         '(MSViTEncoderDecoder): use it and its checkpoint as they are '
                         '(mmseg_msvit.apis.init_mixed_scale_model, tools/test.py)')
    if model.get('type') not in ('EncoderDecoder', 'mmseg.EncoderDecoder'):
        raise ValueError(f"mixed_scale_config: the segmentor is {model.get('type')!r}; only "
                         "mmseg's EncoderDecoder is converted")
    model['type'] = 'MSViTEncoderDecoder'
    model['pretrained'] = None  # the converted checkpoint holds every weight
    model['backbone'] = _backbone(model['backbone'])
    model['neck'] = _neck(model.get('neck'), mixed_decoding)
    head = model.get('decode_head')
    if isinstance(head, dict) and head.get('type') in ('UPerHead', 'mmseg.UPerHead'):
        head['type'] = 'MixedScaleUPerHead'  # mmseg's UPerHead; reads mixed levels too
    elif mixed_decoding:
        raise ValueError('mixed_scale_config: mixed_decoding needs a UPerHead decode head, got '
                         f"{head.get('type') if isinstance(head, dict) else head!r}")
    imports = list((cfg.get('custom_imports') or {}).get('imports', []))
    if 'mmseg_msvit' not in imports:
        imports.append('mmseg_msvit')
    cfg['custom_imports'] = dict(imports=imports, allow_failed_imports=False)
    return with_content_gate(cfg, fine_budget)


def mixed_scale_state_dict(state: Dict[str, torch.Tensor], patch_bias: bool,
                           source: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """An mmseg ViT segmentor's weights under the converted model's names: ``backbone.*`` in
    timm's names, the ``MultiLevelNeck`` keys as ``MixedScaleToDense``'s, the rest unchanged.
    ``patch_bias``: whether the converted backbone has a patch-embedding bias (mmseg's default
    has none; the conversion adds zeros, dropped again here)."""
    from .models.checkpoints import checkpoint_to_timm_vit
    from .models.checkpoints.reading import loaded_key
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if not backbone:
        raise ValueError(f'mmseg2msvit: {source} has no backbone.* weights: not an mmseg '
                         'segmentor checkpoint')
    timm, _ = checkpoint_to_timm_vit(backbone, 'mmseg2msvit: backbone of', source)
    if not patch_bias:
        bias = timm.pop('patch_embed.proj.bias', None)
        if bias is not None and bool(bias.abs().max() > 0):
            raise ValueError(f'mmseg2msvit: {source} has a non-zero patch-embedding bias but the '
                             'config says patch_bias=False')
    out = {loaded_key('backbone.' + k): v for k, v in timm.items()}  # MSViT's names
    out.update({loaded_key(k): v for k, v in state.items()
                if not k.startswith('backbone.')})
    return out


def convert_mmseg_model(config: Union[str, Config], checkpoint: str, fine_budget: float = 0.42,
                        mixed_decoding: bool = False) -> Tuple[Config, dict]:
    """Read an mmseg config and checkpoint (as data) and return the mixed-scale config and a
    checkpoint dict (``state_dict`` and ``meta``: the source's ``dataset_meta`` kept, the source
    recorded) for it."""
    from .cli import load_config
    from .models.checkpoints import read_checkpoint, state_dict_of
    cfg = load_config(config) if isinstance(config, str) else config
    converted = mixed_scale_config(cfg, fine_budget, mixed_decoding)
    raw = read_checkpoint(checkpoint, 'mmseg2msvit: checkpoint')
    state = mixed_scale_state_dict(state_dict_of(raw), converted.model.backbone['patch_bias'],
                                   repr(checkpoint))
    meta = {}
    if isinstance(raw, dict) and isinstance(raw.get('meta'), dict) and \
            isinstance(raw['meta'].get('dataset_meta'), dict):
        meta['dataset_meta'] = raw['meta']['dataset_meta']
    meta['msvit_converted_from'] = dict(
        config=config if isinstance(config, str) else None, checkpoint=checkpoint)
    return converted, dict(state_dict=state, meta=meta)
