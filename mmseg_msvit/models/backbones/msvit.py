"""MSViT: a ViT whose tokens are 16x16 or 32x32 patches, chosen per region by a gate.

Reads like timm's ``VisionTransformer`` (and reuses its ``Block``): the forward is a chain
``decide_scales -> embed -> forward_blocks``; what a caller needs (decisions, gate logits, token
counts) comes back in the outputs' :class:`MixedScaleLayout`, never as fields left on the module.
The embedding is one module, ``patch_embed`` (:class:`~mmseg_msvit.models.tokenizer.
MixedScaleEmbed`: projection, CLS token, position table, coarse-token extras). Parameter names
are timm's ViT's, with the CLS token and the position table under the embedding
(``patch_embed.proj.*``, ``patch_embed.cls_token``, ``patch_embed.pos_embed``, ``blocks.N.*``,
``norm.*``); timm's top-level ``cls_token`` / ``pos_embed`` (and this project's older
``coarse_embed.*``) load as aliases (:func:`~mmseg_msvit.models.checkpoints.msvit_key`), and
``MSViT.cls_token``, ``.pos_embed``, ``.coarse_embed`` read the embedding's. Checkpoint formats
live in :mod:`mmseg_msvit.models.checkpoints`.
"""
import copy
import inspect
import logging
from functools import partial
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.models.vision_transformer import Block

from ..arguments import (check_fine_budget, check_gate_threshold, check_msvit_args,
                         check_train_budget_range, translate_mmseg_vit_args)
from ..builder import build_component
from ..features import MixedScaleFeatures, MixedScaleMaps
from ..gate_training import UntrainedGateWarning
from ..gates import ContentGate, MixedScaleGate
from ..packed import check_packable, packed_block_forward
from ..policy import (ScaleDecision, ScalePolicy, budget_decisions, relaxation_temperature,
                      threshold_decisions)
from ..tokenizer import MixedScaleEmbed, MixedScaleTokens, is_exporting


def gate_config(gate: Optional[dict], fine_patch_size: int, coarse_patch_size: int,
                in_channels: int) -> dict:
    """The gate's config with the backbone's patch sizes and channels filled in.

    ``--cfg-options model.backbone.gate.type=ContentGate`` merges into the configured
    MixedScaleGate dict (or ``type=MixedScaleGate`` into a ContentGate dict): the other gate's
    own options are left over, not meant for the new one, and are dropped with a warning naming
    them.
    """
    cfg = dict(type='MixedScaleGate') if gate is None else dict(gate)
    cfg.setdefault('coarse_patch_size', coarse_patch_size)
    cfg.setdefault('in_channels', in_channels)
    gate_class = MODELS.get(cfg['type']) if isinstance(cfg['type'], str) else cfg['type']
    if gate_class is not None:
        accepted = inspect.signature(gate_class.__init__).parameters
        if 'fine_patch_size' in accepted:
            cfg.setdefault('fine_patch_size', fine_patch_size)
        # options of the shipped gates that the configured one does not take (left by a
        # --cfg-options merge of another gate type: MixedScaleGate's MLP, ContentGate's score)
        shipped = set(inspect.signature(MixedScaleGate.__init__).parameters) | set(
            inspect.signature(ContentGate.__init__).parameters)
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            leftovers = sorted(k for k in cfg if k != 'type' and k not in accepted and
                               k in shipped)
            if leftovers:
                print_log(f'MSViT: gate {gate_class.__name__} ignores {leftovers} (options of '
                          'another gate type left by the config merge)', logger='current',
                          level=logging.WARNING)
                for key in leftovers:
                    cfg.pop(key)
    if cfg['coarse_patch_size'] != coarse_patch_size:
        raise ValueError(f"MSViT: gate coarse_patch_size={cfg['coarse_patch_size']} "
                         f'differs from the backbone coarse_patch_size={coarse_patch_size}')
    return cfg


def _config_field(field: str, doc: str) -> property:
    """A property of one of the config's scale options; setting it checks the value and rebuilds
    :attr:`MSViT.policy` (the mode the options select) as a whole."""

    def get(self):
        return self._scale_config[field]

    def set(self, value):
        self._set_scale_config(**dict(self._scale_config, **{field: value}))

    return property(get, set, doc=doc)


def check_gate_protocol(gate: nn.Module, which: str) -> None:
    """What the backbone asks of every gate besides its logits: ``macs_per_region`` (an int,
    counted in every image's cost) and ``temperature`` (the relaxation's while it trains, None
    for a gate with nothing to train)."""
    name = type(gate).__name__
    if not isinstance(getattr(gate, 'macs_per_region', None), int):
        raise ValueError(f'MSViT: {which} {name} has no integer macs_per_region (its '
                         'multiply-adds per region, counted in every image\'s cost); gates of '
                         'mmseg_msvit.models have it, a gate of your own needs it too')
    if not hasattr(gate, 'temperature'):
        raise ValueError(f'MSViT: {which} {name} has no temperature attribute (the Gumbel-'
                         'sigmoid temperature while it trains, e.g. 1.0, or None for a gate with '
                         'nothing to train: hard decisions); gates of mmseg_msvit.models have it, '
                         'a gate of your own needs it too')


def config_policy(force_scale: Optional[str], gate_threshold: float, fine_budget: Optional[float],
                  train_budget_range: Optional[Tuple[float, float]]) -> ScalePolicy:
    """The policy of a config's scale options, which may name several modes: a forced scale
    first, else budget mode when ``fine_budget`` is set, else threshold mode (the options the
    mode leaves unused are not in it: a threshold kept for when the budget is removed, a
    training range kept in threshold mode)."""
    if force_scale is not None:
        return ScalePolicy.forced(force_scale)
    if fine_budget is not None:
        return ScalePolicy.with_budget(fine_budget, train_budget_range=train_budget_range)
    return ScalePolicy.with_threshold(gate_threshold)


@MODELS.register_module()
class MSViT(BaseModule):
    """Mixed-scale Vision Transformer backbone.

    A gate (:class:`MixedScaleGate`) scores every ``coarse_patch_size`` region of the input; the
    region becomes one coarse token (the region average-pooled to ``fine_patch_size`` and embedded
    by the shared patch embedding) or ``(coarse/fine)^2`` fine tokens. Only active tokens enter the
    transformer. When the images of a batch need different numbers of tokens (threshold mode),
    their tokens are packed into one sequence with attention restricted to each image
    (:mod:`mmseg_msvit.models.packed`), so no padded token costs anything.

    Decisions where the paper is silent (docs/method.md): the CLS token is always kept; a coarse
    token's position embedding is the average of its fine ones; the gate reads pixels.

    Args:
        arch (str | dict): 'tiny', 'small', 'base', 'large' (ViT-Ti/S/B/L) or a dict with
            ``embed_dims``, ``depth``, ``num_heads``. Default: 'small'.
        img_size (int | tuple): size the position embeddings are defined for (they are
            interpolated to every input size, as timm does). Default: 224.
        fine_patch_size (int): S_f. Default: 16.
        coarse_patch_size (int): S_c, a multiple of S_f. Default: 32.
        in_channels (int): Default: 3.
        embed_dims, depth, num_heads (int, optional): override the arch preset.
        mlp_ratio (float): Default: 4.
        qkv_bias (bool): Default: True.
        drop_rate (float): dropout after position embedding and in blocks. Default: 0.
        attn_drop_rate (float): Default: 0.
        drop_path_rate (float): stochastic depth, linearly increasing over blocks. Default: 0.
        out_indices (int | Sequence[int]): blocks whose outputs are returned (-1 = last).
            Default: -1.
        final_norm (bool): apply the final LayerNorm to the last block's output; when False the
            backbone has no ``norm`` parameters (a checkpoint's ``norm.*`` are then unexpected
            keys). Default: True.
        with_cp (bool): gradient checkpointing of the blocks in training. Default: False.
        frozen_stages (int): -1 = nothing frozen; 0 = patch embedding, position embedding and
            CLS frozen; k > 0 additionally blocks 0..k-1. Default: -1.
        force_scale (str, optional): None (the gate decides), 'fine' (every region fine: exactly
            a plain ViT/S_f, the gate is not run) or 'coarse' (every region coarse). When set,
            the gate's parameters are frozen (they receive no gradient) but stay in the model,
            so checkpoints move between gated and forced configs.

            ``force_scale``, ``gate_threshold``, ``fine_budget`` and ``train_budget_range``
            make the model's own scale policy (:attr:`policy`, a
            :class:`~mmseg_msvit.models.policy.ScalePolicy`); a call passes another with
            ``forward(img, policy)``.
        gate (dict): config of the gate. Default: ``dict(type='MixedScaleGate')``.
        gate_threshold (float): eval threshold in [0, 1] on the gate probability; may be changed
            after building (``model.backbone.gate_threshold = 0.7``, checked). Default: 0.5.
        fine_budget (float, optional): budget mode. A float in (0, 1]: every image keeps exactly
            ``round(fine_budget * regions)`` fine regions (half up, at least one), those the gate
            scores highest, so all
            images of a batch have the same token count (no padding, static shapes, exportable);
            in training the top-k carries a straight-through gradient. 1.0 is the dense ViT.
            None: threshold mode (adaptive per image). Settable after building
            (``model.backbone.fine_budget = 0.3``). Default: None.
        train_budget_range (tuple, optional): our option, with ``fine_budget``: in training, each
            forward draws its budget uniformly from ``(low, high)`` (one draw per batch, so the
            batch keeps equal token counts); evaluation uses ``fine_budget``. Training on many
            budgets, up to 1.0 (dense), lets the transformer keep learning detail from fine
            tokens while it learns to read coarse ones (README, "The evidence study"). Default: None.
        freeze_gate (bool): keep the gate's parameters fixed (requires_grad False). Default: False.
        gate_init (dict, optional): ``dict(checkpoint='gate.pth', freeze=False)`` loads a gate
            written by ``tools/transfer_gate.py`` (from any MSViT, any width, any task) after the
            backbone's own initialisation; patch sizes must match, and the segmentor/classifier
            checks the input normalisation (clear errors). ``freeze=True`` keeps it fixed, as
            ``freeze_gate``.
        pretrained (str, optional): shorthand for ``init_cfg=dict(type='Pretrained',
            checkpoint=pretrained)`` (what mmseg's segmentor ``pretrained=`` passes down).
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint='file.pth' or
            '.safetensors', prefix=None)`` loads a local ViT checkpoint with timm/DeiT, mmseg
            ``VisionTransformer`` or mmpretrain ``VisionTransformer`` key names, alone or inside a
            segmentor/classifier checkpoint; otherwise timm's ViT initialisation. Position
            embeddings of another grid are resized on every load (a ``load_state_dict``
            pre-hook, so mmengine's ``load_checkpoint`` resizes too).
        coarse_detail (bool): our option: add to every coarse token a learned residual from its
            region's fine patch embeddings (:class:`~mmseg_msvit.models.coarse_embed.
            CoarseTokenEmbed`; its output layer starts at zero, so pretrained weights compute
            exactly what they computed without it; its MACs are counted). Default: False.
        coarse_scale_embed (bool): our option: a learned vector (starting at zero) added to every
            coarse token. Default: False.
        token_packing (bool): in a batch whose images need different numbers of tokens, pack
            them into one sequence (True) or pad every image to the longest with a key mask
            (False: the padded path, kept for comparison; ``benchmark_speed.py`` times both).
            Batches of equal counts (budget mode, forced scale, equal decisions) are never
            packed or padded. Default: True.
        pos_embed_antialias (bool): resample the position table to another input size with
            antialiasing, as timm does (True), or with plain bicubic interpolation, as mmseg's
            ViT does (False: what a converted mmseg model needs to compute what mmseg computed
            at sizes other than ``img_size``). Default: True.
        out_type (str): 'tokens' (default): each tap as :class:`MixedScaleFeatures` (tokens plus
            layout; the ``MixedScaleToDense`` neck rebuilds the maps); 'featmap': the taps as
            dense (B, D, H/S_f, W/S_f) maps in a :class:`MixedScaleMaps` tuple that carries the
            layout, as mmpretrain's ``out_type='featmap'``, so mmseg's own necks and heads
            (``MultiLevelNeck``, Segmenter's heads, none at all) read the backbone directly.
        norm_eps (float): LayerNorm eps. timm and mmpretrain use 1e-6, mmseg's
            ``norm_cfg=dict(type='LN')`` 1e-5: match the source of pretrained weights.
            Default: 1e-6.
        patch_bias (bool): the patch embedding has a bias (timm, mmpretrain); mmseg's
            ``VisionTransformer`` default is False. Default: True.
        **mmseg_vit_args: mmseg ``VisionTransformer`` names, accepted where they map one to one
            (``patch_size``, ``num_layers``, ``norm_cfg``, ``act_cfg``, ``with_cls_token``
            (False: no token attends to the CLS token, as in mmseg, whose layers never see it;
            batches are then padded, not packed), and ``output_cls_token``, ``patch_norm``,
            ``pre_norm``, ``interpolate_mode``,
            at the values MSViT implements; ``norm_eval`` at either value, without effect (mmseg's
            ViT puts its LayerNorms in eval mode, where they compute the same);
            :func:`mmseg_msvit.models.arguments.translate_mmseg_vit_args`).

    Outputs:
        tuple[MixedScaleFeatures]: one per ``out_indices``, sharing one layout (decisions, gate
        logits, token counts); ``.to_dense()`` gives (B, D, H/16, W/16). With
        ``out_type='featmap'``: :class:`~mmseg_msvit.models.MixedScaleMaps`, those maps in a
        tuple that carries the layout.
    """
    num_prefix_tokens = MixedScaleEmbed.num_prefix_tokens  # the CLS token, the embedding's

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 img_size: Union[int, Tuple[int, int]] = 224,
                 fine_patch_size: int = 16,
                 coarse_patch_size: int = 32,
                 in_channels: int = 3,
                 embed_dims: Optional[int] = None,
                 depth: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 out_indices: Union[int, Sequence[int]] = -1,
                 final_norm: bool = True,
                 with_cp: bool = False,
                 frozen_stages: int = -1,
                 force_scale: Optional[str] = None,
                 gate: Optional[dict] = None,
                 gate_threshold: float = 0.5,
                 fine_budget: Optional[float] = None,
                 train_budget_range: Optional[Tuple[float, float]] = None,
                 freeze_gate: bool = False,
                 gate_init: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None,
                 norm_eps: float = 1e-6,
                 patch_bias: bool = True,
                 token_packing: bool = True,
                 coarse_detail: bool = False,
                 coarse_scale_embed: bool = False,
                 pos_embed_antialias: bool = True,
                 out_type: str = 'tokens',
                 **mmseg_vit_args) -> None:
        if mmseg_vit_args:
            renamed = translate_mmseg_vit_args(
                mmseg_vit_args, dict(fine_patch_size=None if fine_patch_size == 16 else
                                     fine_patch_size, depth=depth))
            fine_patch_size = renamed.get('fine_patch_size', fine_patch_size)
            depth = renamed.get('depth', depth)
            norm_eps = renamed.get('norm_eps', norm_eps)
        #: mmseg's ``with_cls_token``: False keeps the CLS token out of the patch tokens'
        #: attention (mmseg drops it before its layers; here it still runs, unattended, so the
        #: parameters and the position table keep mmseg's layout) and uses padded batches
        self.with_cls_token = renamed.get('with_cls_token', True) if mmseg_vit_args else True
        if not self.with_cls_token:
            token_packing = False
        if pretrained is not None:
            if not isinstance(pretrained, str) or not pretrained:
                raise TypeError('MSViT: pretrained must be a checkpoint path (str) or None, got '
                                f'{pretrained!r}')
            if init_cfg is not None:
                raise ValueError('MSViT: give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        args = check_msvit_args(
            arch=arch, embed_dims=embed_dims, depth=depth, num_heads=num_heads,
            img_size=img_size, fine_patch_size=fine_patch_size,
            coarse_patch_size=coarse_patch_size, in_channels=in_channels, mlp_ratio=mlp_ratio,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            out_indices=out_indices, frozen_stages=frozen_stages, gate_init=gate_init,
            norm_eps=norm_eps, patch_bias=patch_bias, token_packing=token_packing,
            coarse_detail=coarse_detail, coarse_scale_embed=coarse_scale_embed)
        for name in ('embed_dims', 'depth', 'num_heads', 'fine_patch_size', 'coarse_patch_size',
                     'in_channels', 'mlp_ratio', 'img_size', 'out_indices', 'frozen_stages',
                     'gate_init', 'norm_eps', 'patch_bias', 'token_packing'):
            setattr(self, name, args[name])
        check_train_budget_range(train_budget_range, fine_budget)  # a config's range: its budget
        #: the scale policy a forward uses when its call gives none: the mode the config's
        #: options select (:func:`config_policy`); immutable, rebuilt as a whole by the
        #: ``force_scale`` / ``fine_budget`` / ``gate_threshold`` / ``train_budget_range``
        #: setters
        self._set_scale_config(force_scale, gate_threshold, fine_budget, train_budget_range)
        if not isinstance(pos_embed_antialias, bool):
            raise ValueError('MSViT: pos_embed_antialias must be True or False, got '
                             f'{pos_embed_antialias!r}')
        if out_type not in ('tokens', 'featmap'):
            raise ValueError(f"MSViT: out_type must be 'tokens' (MixedScaleFeatures) or 'featmap' "
                             f'(dense maps with the layout, for any mmseg neck), got {out_type!r}')
        self.out_type = out_type
        self.with_cp = with_cp
        # gate_init's freeze is the config's short way of saying freeze_gate: one flag
        self.freeze_gate = bool(freeze_gate) or bool((gate_init or {}).get('freeze', False))
        self._gate_only = False  # set by freeze_all_but_gate
        fine, coarse, dims = self.fine_patch_size, self.coarse_patch_size, self.embed_dims

        # --- parameters, named as timm's VisionTransformer (the embedding's under patch_embed) ---
        # (patch_bias=False: mmseg's VisionTransformer default, no patch-embedding bias)
        self.patch_embed = MixedScaleEmbed(self.img_size, fine, coarse, self.in_channels, dims,
                                           patch_bias=patch_bias,
                                           pos_embed_antialias=pos_embed_antialias)
        self.pos_drop = nn.Dropout(p=args['drop_rate'])
        norm_layer = partial(nn.LayerNorm, eps=self.norm_eps)
        drop_path = [x.item() for x in torch.linspace(0, args['drop_path_rate'], self.depth)]
        self.blocks = nn.ModuleList([
            Block(dim=dims, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                  qkv_bias=qkv_bias, proj_drop=args['drop_rate'],
                  attn_drop=args['attn_drop_rate'], drop_path=drop_path[i],
                  norm_layer=norm_layer) for i in range(self.depth)
        ])
        # no final LayerNorm parameters when they are not used (final_norm=False): a trainable
        # parameter without gradient stops DistributedDataParallel at its second iteration
        self.norm = norm_layer(dims) if final_norm else nn.Identity()
        if token_packing:
            check_packable(self.blocks[0])
        self.gate = build_component(gate_config(gate, fine, coarse, self.in_channels))
        check_gate_protocol(self.gate, 'the gate')
        if coarse_detail or coarse_scale_embed:
            self.patch_embed.add_coarse_extras(coarse_detail, coarse_scale_embed)

        self._register_load_state_dict_pre_hook(self._key_aliases)
        # a gate trained by nothing but the task loss is warned about (once); a wrapper that
        # owns gate losses declares itself (declare_gate_training)
        self.untrained_gate = UntrainedGateWarning('MSViT', trained=False)
        self._reset_parameters()
        self._freeze()

    # The config's scale options, one at a time (``model.backbone.fine_budget = 0.3``): each
    # setter checks the value and rebuilds the whole immutable policy; a single forward with
    # another rule passes ``policy=`` instead.
    force_scale = _config_field('force_scale', "None (the gate decides), 'fine' or 'coarse'.")
    gate_threshold = _config_field('gate_threshold', 'Eval threshold on the gate probability of '
                                   'FINE, a float in [0, 1] (threshold mode).')
    fine_budget = _config_field('fine_budget', "Budget mode's fine fraction per image in (0, 1], "
                                'or None (threshold mode).')
    train_budget_range = _config_field('train_budget_range', 'The training budget range '
                                       '(budget mode), or None.')

    def _set_scale_config(self, force_scale, gate_threshold, fine_budget,
                          train_budget_range) -> None:
        """Check every one of the config's scale options (also those the mode leaves unused),
        keep them as checked and rebuild the policy (:func:`config_policy`)."""
        config = dict(force_scale=force_scale,
                      gate_threshold=check_gate_threshold(gate_threshold),
                      fine_budget=check_fine_budget(fine_budget),
                      train_budget_range=check_train_budget_range(
                          train_budget_range, fine_budget, budget_required=False))
        self.policy = config_policy(**config)  # (checks force_scale)
        self._scale_config = config

    def declare_gate_training(self, owner: str, trained: bool) -> None:
        """Called by the model that owns the gate losses (the segmentor, the classifier): its
        name for the untrained-gate warning, and whether a gate loss or probe trains the gate
        (then the warning never fires)."""
        self.untrained_gate = UntrainedGateWarning(owner, trained)

    @property
    def tokens_per_fine_region(self) -> int:
        """Fine tokens that replace one coarse token, (S_c/S_f)^2."""
        return (self.coarse_patch_size // self.fine_patch_size)**2

    @property
    def cls_token(self) -> nn.Parameter:
        """The embedding's CLS token (timm's name on the backbone)."""
        return self.patch_embed.cls_token

    @property
    def pos_embed(self) -> nn.Parameter:
        """The embedding's position table for ``img_size`` (timm's name on the backbone)."""
        return self.patch_embed.pos_embed

    @property
    def pos_embed_antialias(self) -> bool:
        """Whether the position table is resampled with antialiasing (the embedding's)."""
        return self.patch_embed.pos_embed_antialias

    @property
    def coarse_embed(self):
        """The embedding's coarse-token extras (None without ``coarse_detail`` /
        ``coarse_scale_embed``)."""
        return self.patch_embed.coarse_embed

    def dense_copy(self) -> 'MSViT':
        """A copy for a dense model (the distillation teacher): without the coarse-token
        extras, which only coarse tokens use."""
        return copy.deepcopy(self, {id(self.coarse_embed): None})  # the copy's: None

    # ------------------------------------------------------------------ weights
    @staticmethod
    def _key_aliases(state_dict, prefix, *args, **kwargs) -> None:
        """``load_state_dict`` pre-hook: timm's top-level ``cls_token`` / ``pos_embed`` and the
        older ``coarse_embed.*`` read as the embedding's
        (:func:`~mmseg_msvit.models.checkpoints.msvit_key`)."""
        from ..checkpoints import msvit_key, rename_keys
        rename_keys(state_dict, prefix, msvit_key)

    def _reset_parameters(self) -> None:
        """timm's ViT initialisation (trunc-normal 0.02 linears, zero biases)."""
        self.patch_embed.reset_parameters()
        for name, module in self.named_modules():
            if name.startswith(('gate', 'patch_embed.coarse_embed')):
                continue
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.coarse_embed is not None:
            self.coarse_embed.reset_parameters()

    def init_weights(self) -> None:
        from ..checkpoints import load_gate, load_pretrained
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            load_pretrained(self, self.init_cfg['checkpoint'], prefix=self.init_cfg.get('prefix'))
        else:
            super().init_weights()
        if self.gate_init is not None:
            load_gate(self, self.gate_init['checkpoint'])
            self._freeze()
        self._is_init = True

    def load_pretrained(self, path: str, prefix: Optional[str] = None) -> Tuple[list, list]:
        """:func:`mmseg_msvit.models.checkpoints.load_pretrained` into this backbone."""
        from ..checkpoints import load_pretrained
        return load_pretrained(self, path, prefix)

    def load_gate(self, path: str, normalisation: Optional[dict] = None) -> dict:
        """:func:`mmseg_msvit.models.checkpoints.load_gate` into this backbone."""
        from ..checkpoints import load_gate
        meta = load_gate(self, path, normalisation)
        self._freeze()
        return meta

    def freeze_all_but_gate(self) -> None:
        """Train the gate alone from now on: every other parameter of the backbone is frozen and
        its modules stay in eval mode (dropout off) in training (the segmentor's
        ``train_gate_only``)."""
        if self.force_scale is not None or self.freeze_gate or not any(
                p.requires_grad for p in self.gate.parameters()):
            raise ValueError('MSViT: training the gate alone needs a gate with trainable '
                             'parameters (no force_scale, no frozen or parameter-free gate)')
        self._gate_only = True
        self._freeze()

    def _freeze(self) -> None:
        """The one place that freezes: ``frozen_stages``, the gate (``freeze_gate`` or a forced
        scale) or everything but the gate (:meth:`freeze_all_but_gate`)."""
        frozen = []
        if self._gate_only:
            frozen = [module for name, module in self.named_children() if name != 'gate']
        elif self.frozen_stages >= 0:
            # the embedding: projection, CLS token, positions, coarse-token extras
            frozen = [self.patch_embed, *self.blocks[:self.frozen_stages]]
        if self.freeze_gate or self.force_scale is not None:
            # with the scale forced the gate never runs: nothing trainable may go without
            # gradient (DistributedDataParallel); its weights stay loadable
            frozen.append(self.gate)
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()
        return self

    # ------------------------------------------------------------------ forward stages
    def pad_input(self, img: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Check the input, pad right/bottom to a multiple of the coarse size; return the fine
        cells to keep."""
        if not isinstance(img, torch.Tensor) or img.dim() != 4:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f'MSViT: img must be a 4-D (B, C, H, W) tensor, got {shape}')
        if img.shape[0] < 1:
            raise ValueError('MSViT: img must hold at least one image (batch size >= 1), got '
                             f'shape {tuple(img.shape)}')
        if img.shape[1] != self.in_channels:
            raise ValueError(f'MSViT: img must have in_channels={self.in_channels} channels '
                             f'(B, C, H, W), got shape {tuple(img.shape)}')
        weight = self.patch_embed.proj.weight
        if not img.is_floating_point():
            raise ValueError(f'MSViT: img is a {img.dtype} tensor; the backbone takes normalised '
                             f'floating-point images ({weight.dtype}), as the data preprocessor '
                             'gives them (convert with img.float() and normalise first)')
        if img.dtype != weight.dtype and not torch.is_autocast_enabled(img.device.type):
            raise ValueError(f'MSViT: img is {img.dtype} but the weights are {weight.dtype}; '
                             f'convert one to the other (img.to({weight.dtype}) or '
                             f'model.to({img.dtype})), or run under torch.autocast')
        height, width = img.shape[-2:]
        if height < self.coarse_patch_size or width < self.coarse_patch_size:
            raise ValueError(f'MSViT: input of {height}x{width} px is smaller than one coarse '
                             f'region ({self.coarse_patch_size}x{self.coarse_patch_size} px)')
        pad_h = -height % self.coarse_patch_size
        pad_w = -width % self.coarse_patch_size
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h))
        out_size = (-(-height // self.fine_patch_size), -(-width // self.fine_patch_size))
        return img, out_size

    def decide_scales(self, img: torch.Tensor,
                      policy: Optional[ScalePolicy] = None) -> ScaleDecision:
        """Decide every region of a padded input under ``policy`` (default :attr:`policy`).

        Precedence (:class:`~mmseg_msvit.models.policy.ScalePolicy`): given decisions, a forced
        scale, then the gate (the policy's, else the backbone's): its top share of regions per
        image in budget mode, else its threshold.

        Returns:
            ScaleDecision: mask, straight-through value, gate logits and token counts.
        """
        policy = self.policy if policy is None else policy
        if not isinstance(policy, ScalePolicy):
            raise TypeError('MSViT: policy must be a ScalePolicy (mmseg_msvit.models.'
                            f'ScalePolicy), got {type(policy).__name__}')
        budget = policy.draw_budget(self.training, self.train_budget_range)
        batch = img.shape[0]
        grid = (img.shape[-2] // self.coarse_patch_size, img.shape[-1] // self.coarse_patch_size)
        regions, per_fine = grid[0] * grid[1], self.tokens_per_fine_region
        mode = policy.mode
        if mode == 'given':
            if tuple(policy.fine_mask.shape) != (batch, *grid):
                raise ValueError(f'MSViT: fine_mask must be (B, Hc, Wc) = {(batch, *grid)} for '
                                 f'this input, got {tuple(policy.fine_mask.shape)}')
            value = None if policy.fine_value is None else policy.fine_value.to(img.device)
            decision = ScaleDecision.from_mask(policy.fine_mask.to(device=img.device), per_fine,
                                               value)
        elif mode == 'forced':
            make = torch.ones if policy.force_scale == 'fine' else torch.zeros
            decision = ScaleDecision.from_mask(
                make((batch, *grid), dtype=torch.bool, device=img.device), per_fine,
                static_num_tokens=policy.static_num_tokens(regions, per_fine))
        else:
            gate = self.gate if policy.gate is None else self._checked_gate(policy.gate)
            logits = self._checked_logits(gate, gate(img), (batch, *grid))
            temperature = relaxation_temperature(gate)
            if mode == 'budget':
                fine_mask, value = budget_decisions(
                    logits, policy.num_fine_regions(regions, budget), temperature)
                static = policy.static_num_tokens(regions, per_fine, budget)
            else:
                fine_mask, value = threshold_decisions(logits, policy.decision_threshold,
                                                       temperature)
                static = None
            decision = ScaleDecision.from_mask(fine_mask, per_fine, value, logits, static,
                                               gate.macs_per_region)
        return decision  # the tokenizer refuses to trace a count that is not static

    def _checked_logits(self, gate: nn.Module, logits, shape) -> torch.Tensor:
        """A gate's logits: (B, Hc, Wc) and, in evaluation, finite (a NaN would pick arbitrary
        regions without a word; in training it reaches the loss, where ``FiniteLossHook`` stops
        the run naming the iteration). The finiteness check reads one value back, so it is
        skipped while tracing or exporting (budget mode's static graph)."""
        name = type(gate).__name__
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != tuple(shape):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else \
                type(logits).__name__
            raise ValueError(f'MSViT: gate {name} returned logits of shape {got}; a gate gives '
                             f'one logit per region, (B, Hc, Wc) = {tuple(shape)}')
        if not (self.training or torch.jit.is_tracing() or is_exporting() or
                torch.compiler.is_compiling()) and not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).sum())
            raise FloatingPointError(f'MSViT: gate {name} returned {bad} non-finite logits (NaN or '
                                     'inf) of ' f'{logits.numel()}: its decisions would be '
                                     'arbitrary; check its weights and the input')
        return logits

    def _checked_gate(self, gate: nn.Module) -> nn.Module:
        """A policy's substitute gate, refused when it reads regions of another size or other
        channels than this backbone's, or lacks what a gate says of itself
        (:func:`check_gate_protocol`)."""
        check_gate_protocol(gate, "the policy's gate")
        ratio = self.coarse_patch_size // self.fine_patch_size
        for name, ours in (('coarse_patch_size', self.coarse_patch_size),
                           ('in_channels', self.in_channels), ('ratio', ratio)):
            theirs = getattr(gate, name, ours)
            if theirs != ours:
                raise ValueError(f'MSViT: the policy\'s gate {type(gate).__name__} has '
                                 f'{name}={theirs}, this backbone {ours} (coarse_patch_size='
                                 f'{self.coarse_patch_size}, fine_patch_size='
                                 f'{self.fine_patch_size}); build the gate with the backbone\'s')
        return gate

    def embed(self,
              img: torch.Tensor,
              decision: ScaleDecision,
              out_size: Optional[Tuple[int, int]] = None) -> MixedScaleTokens:
        """Tokenize a padded input with the given decisions (the embedding,
        :class:`~mmseg_msvit.models.tokenizer.MixedScaleEmbed`: CLS, positions and coarse-token
        extras included; then the position dropout); ``ScaleDecision.from_mask`` makes a
        decision from a bare mask."""
        tokens = self.patch_embed(img, decision, out_size, pack=self.token_packing,
                                  cls_key=self.with_cls_token)
        return tokens._replace(tokens=self.pos_drop(tokens.tokens))

    def forward_blocks(self, tokens: MixedScaleTokens) -> Tuple[MixedScaleFeatures, ...]:
        """The transformer blocks; the taps of ``out_indices`` as :class:`MixedScaleFeatures`."""
        x, attn_mask, layout = tokens
        packed = layout.packed
        if packed is not None:  # (1, N, D): every image's tokens, attention within each image
            block_fn, extra = packed_block_forward, packed
        else:
            block_fn, extra = None, attn_mask
        outs = []
        for index, block in enumerate(self.blocks):
            call = block if block_fn is None else partial(block_fn, block)
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(call, x, extra, use_reentrant=False)
            else:
                x = call(x, extra)
            if index == self.depth - 1:
                x = self.norm(x)
            if index in self.out_indices:
                outs.append(MixedScaleFeatures(x[0], layout) if packed is not None else
                            MixedScaleFeatures(x[:, self.num_prefix_tokens:], layout, x[:, 0]))
        return tuple(outs)

    def forward(self,
                img: torch.Tensor,
                policy: Optional[ScalePolicy] = None,
                *,
                fine_mask: Optional[torch.Tensor] = None,
                fine_value: Optional[torch.Tensor] = None) -> Tuple[MixedScaleFeatures, ...]:
        """Run the backbone.

        Args:
            img (Tensor): (B, C, H, W); sides that are not multiples of the coarse size are
                zero-padded and the dense outputs cropped back.
            policy (ScalePolicy, optional): how this forward decides the scales; None: the
                config's (:attr:`policy`). Nothing on the module changes.
            fine_mask, fine_value (Tensor, optional): shorthand for
                ``policy=ScalePolicy.given(fine_mask, fine_value)``: (B, Hc, Wc) bool decisions
                (Hc, Wc of the padded input) and optionally a float tensor equal to them that
                carries gradient, so the loss's straight-through gradient with respect to each
                region's decision can be read (``tools/analysis_tools/gate_signal.py``).

        Returns:
            tuple[MixedScaleFeatures]: one per ``out_indices``; their shared ``layout`` holds the
            decisions, the gate logits and the token counts of this forward. With
            ``out_type='featmap'``: :class:`~mmseg_msvit.models.MixedScaleMaps`, the taps as
            (B, D, H/S_f, W/S_f) maps in a tuple that carries the same ``layout``.
        """
        if fine_mask is not None or fine_value is not None:
            if policy is not None:
                raise ValueError('MSViT: give either policy or fine_mask/fine_value, not both')
            policy = ScalePolicy.given(fine_mask, fine_value)
        img, out_size = self.pad_input(img)
        outs = self.forward_blocks(self.embed(img, self.decide_scales(img, policy), out_size))
        if self.training:
            self.untrained_gate.check(self, outs[0].layout)
        if self.out_type == 'featmap':
            return MixedScaleMaps([features.to_dense() for features in outs], outs[0].layout)
        return outs
