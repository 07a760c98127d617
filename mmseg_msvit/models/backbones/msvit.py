"""MSViT: a ViT whose tokens are 16x16 or 32x32 patches, chosen per region by a gate.

Reads like timm's ``VisionTransformer`` (and reuses its ``Block`` and ``PatchEmbed``): the forward
is a chain ``decide_scales -> embed -> forward_blocks``; what a caller needs (decisions, gate
logits, token counts) comes back in the outputs' :class:`MixedScaleLayout`, never as fields left
on the module. Parameter names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.N.*``, ``norm.*``); checkpoint formats live in :mod:`mmseg_msvit.models.checkpoints`.
"""
import inspect
import logging
import warnings
import math
from functools import partial
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch.nn.modules.batchnorm import _BatchNorm

from ..arguments import (check_fine_budget, check_gate_threshold, check_out_indices,
                         check_positive_int, check_positive_real, check_rate, check_size_pair,
                         is_int, is_real, translate_mmseg_vit_args)
from ..builder import build_component
from ..coarse_embed import CoarseTokenEmbed
from ..features import MixedScaleFeatures
from ..gates import MixedScaleGate, budget_decisions
from ..packed import check_packable, packed_block_forward
from ..tokenizer import MixedScaleTokenizer, MixedScaleTokens


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
        norm_eval (bool): keep BatchNorm layers (if any) in eval mode. Default: False.
        frozen_stages (int): -1 = nothing frozen; 0 = patch embedding, position embedding and
            CLS frozen; k > 0 additionally blocks 0..k-1. Default: -1.
        force_scale (str, optional): None (the gate decides), 'fine' (every region fine: exactly
            a plain ViT/S_f, the gate is not run) or 'coarse' (every region coarse). When set,
            the gate's parameters are frozen (they receive no gradient) but stay in the model,
            so checkpoints move between gated and forced configs.
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
            tokens while it learns to read coarse ones (README, "Evidence"). Default: None.
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
        norm_eps (float): LayerNorm eps. timm and mmpretrain use 1e-6, mmseg's
            ``norm_cfg=dict(type='LN')`` 1e-5: match the source of pretrained weights.
            Default: 1e-6.
        patch_bias (bool): the patch embedding has a bias (timm, mmpretrain); mmseg's
            ``VisionTransformer`` default is False. Default: True.
        **mmseg_vit_args: mmseg ``VisionTransformer`` names, accepted where they map one to one
            (``patch_size``, ``num_layers``, ``norm_cfg``, ``act_cfg``, and ``with_cls_token``,
            ``output_cls_token``, ``patch_norm``, ``pre_norm``, ``interpolate_mode`` at the
            values MSViT implements; :func:`mmseg_msvit.models.arguments.
            translate_mmseg_vit_args`).

    Outputs:
        tuple[MixedScaleFeatures]: one per ``out_indices``, sharing one layout (decisions, gate
        logits, token counts); ``.to_dense()`` gives (B, D, H/16, W/16).
    """
    arch_zoo = {
        'tiny': dict(embed_dims=192, depth=12, num_heads=3),
        'small': dict(embed_dims=384, depth=12, num_heads=6),
        'base': dict(embed_dims=768, depth=12, num_heads=12),
        'large': dict(embed_dims=1024, depth=24, num_heads=16),
    }
    num_prefix_tokens = 1

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
                 norm_eval: bool = False,
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
                 **mmseg_vit_args) -> None:
        if mmseg_vit_args:
            renamed = translate_mmseg_vit_args(
                mmseg_vit_args, dict(fine_patch_size=None if fine_patch_size == 16 else
                                     fine_patch_size, depth=depth))
            fine_patch_size = renamed.get('fine_patch_size', fine_patch_size)
            depth = renamed.get('depth', depth)
            norm_eps = renamed.get('norm_eps', norm_eps)
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('MSViT: give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        settings = self._arch_settings(arch, embed_dims=embed_dims, depth=depth,
                                       num_heads=num_heads)
        self.embed_dims, self.depth, self.num_heads = (settings['embed_dims'], settings['depth'],
                                                       settings['num_heads'])
        self.fine_patch_size = check_positive_int('MSViT', 'fine_patch_size', fine_patch_size)
        self.coarse_patch_size = check_positive_int('MSViT', 'coarse_patch_size',
                                                    coarse_patch_size)
        self.in_channels = check_positive_int('MSViT', 'in_channels', in_channels)
        self.mlp_ratio = check_positive_real('MSViT', 'mlp_ratio', mlp_ratio)
        for name, value in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                            ('drop_path_rate', drop_path_rate)):
            check_rate('MSViT', name, value)
        if not is_int(frozen_stages) or not -1 <= frozen_stages <= self.depth:
            raise ValueError(f'MSViT: frozen_stages must be an int in -1..{self.depth} (-1: '
                             f'nothing frozen, depth={self.depth}: every block), got '
                             f'{frozen_stages!r}')
        if self.embed_dims % self.num_heads != 0:
            raise ValueError(f'MSViT: embed_dims={self.embed_dims} is not divisible by '
                             f'num_heads={self.num_heads}')
        if coarse_patch_size % fine_patch_size != 0 or coarse_patch_size <= fine_patch_size:
            raise ValueError('MSViT: coarse_patch_size must be a multiple (> 1x) of '
                             f'fine_patch_size, got coarse_patch_size={coarse_patch_size}, '
                             f'fine_patch_size={fine_patch_size}')
        if force_scale not in (None, 'fine', 'coarse'):
            raise ValueError(f"MSViT: force_scale must be None, 'fine' or 'coarse', got "
                             f'{force_scale!r}')
        self.img_size = check_size_pair('MSViT', 'img_size', img_size)
        if self.img_size[0] % coarse_patch_size or self.img_size[1] % coarse_patch_size:
            raise ValueError(f'MSViT: img_size={self.img_size} must be a multiple of '
                             f'coarse_patch_size={coarse_patch_size}')
        if gate_init is not None and 'checkpoint' not in gate_init:
            raise ValueError(f'MSViT: gate_init needs a checkpoint, got {gate_init}')
        self.out_indices = check_out_indices('MSViT', out_indices, self.depth)
        self.force_scale = force_scale
        self.gate_threshold = gate_threshold  # checked by the property's setter
        self.fine_budget = fine_budget  # checked by the property's setter
        if train_budget_range is not None:
            low_high = tuple(train_budget_range) if isinstance(train_budget_range,
                                                               (list, tuple)) else ()
            if len(low_high) != 2 or fine_budget is None or not all(
                    is_real(v) and 0 < v <= 1 for v in low_high) or low_high[0] > low_high[1]:
                raise ValueError('MSViT: train_budget_range must be (low, high) with 0 < low <= '
                                 'high <= 1, and needs a fine_budget (the evaluation budget), '
                                 f'got train_budget_range={train_budget_range!r}, '
                                 f'fine_budget={fine_budget!r}')
            train_budget_range = (float(low_high[0]), float(low_high[1]))
        self.train_budget_range = train_budget_range
        self.final_norm = final_norm
        self.with_cp = with_cp
        if not isinstance(token_packing, bool):
            raise ValueError(f'MSViT: token_packing must be True or False, got '
                             f'{token_packing!r}')
        self.token_packing = token_packing
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        self.freeze_gate = freeze_gate or bool((gate_init or {}).get('freeze', False))
        self.gate_init = gate_init

        # --- parameters, named as timm's VisionTransformer ---
        self.patch_embed = PatchEmbed(
            img_size=self.img_size, patch_size=fine_patch_size, in_chans=in_channels,
            embed_dim=self.embed_dims, strict_img_size=False)
        self.pos_grid_size = (self.img_size[0] // fine_patch_size,
                              self.img_size[1] // fine_patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + self.pos_grid_size[0] *
                        self.pos_grid_size[1], self.embed_dims))
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.norm_eps = check_positive_real('MSViT', 'norm_eps', norm_eps)
        if not isinstance(patch_bias, bool):
            raise ValueError(f'MSViT: patch_bias must be True or False, got {patch_bias!r}')
        self.patch_bias = patch_bias
        if not patch_bias:  # mmseg's VisionTransformer default: no patch-embedding bias
            self.patch_embed.proj.bias = None
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        drop_path = [x.item() for x in torch.linspace(0, drop_path_rate, self.depth)]
        self.blocks = nn.ModuleList([
            Block(dim=self.embed_dims, num_heads=self.num_heads, mlp_ratio=mlp_ratio,
                  qkv_bias=qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=drop_path[i], norm_layer=norm_layer) for i in range(self.depth)
        ])
        # no final LayerNorm parameters when they are not used (final_norm=False): a trainable
        # parameter without gradient stops DistributedDataParallel at its second iteration
        self.norm = norm_layer(self.embed_dims) if final_norm else nn.Identity()
        if token_packing:
            check_packable(self.blocks[0])

        gate_cfg = dict(type='MixedScaleGate') if gate is None else dict(gate)
        gate_cfg.setdefault('coarse_patch_size', coarse_patch_size)
        gate_cfg.setdefault('in_channels', in_channels)
        gate_class = MODELS.get(gate_cfg['type']) if isinstance(gate_cfg['type'], str) else \
            gate_cfg['type']
        if gate_class is not None and \
                'fine_patch_size' in inspect.signature(gate_class.__init__).parameters:
            gate_cfg.setdefault('fine_patch_size', fine_patch_size)
        if gate_class is not None and gate_class is not MixedScaleGate:
            # `--cfg-options model.backbone.gate.type=ContentGate` merges into the configured
            # MixedScaleGate dict: its own options are left over, not meant for this gate
            accepted = inspect.signature(gate_class.__init__).parameters
            leftovers = sorted(k for k in gate_cfg if k != 'type' and k not in accepted and
                               k in inspect.signature(MixedScaleGate.__init__).parameters)
            if leftovers:
                print_log(f'MSViT: gate {gate_class.__name__} ignores {leftovers} (options of '
                          'MixedScaleGate left by the config merge)', logger='current',
                          level=logging.WARNING)
                for key in leftovers:
                    gate_cfg.pop(key)
        if gate_cfg['coarse_patch_size'] != coarse_patch_size:
            raise ValueError(f"MSViT: gate coarse_patch_size={gate_cfg['coarse_patch_size']} "
                             f'differs from the backbone coarse_patch_size={coarse_patch_size}')
        self.gate = build_component(gate_cfg)
        #: set by MSViTEncoderDecoder / MSViTImageClassifier when a gate loss or probe trains
        #: the gate; a gate trained with neither gets a warning (once)
        self.gate_trained_by: Optional[str] = None
        self._warned_untrained_gate = False
        self.tokenizer = MixedScaleTokenizer(fine_patch_size, coarse_patch_size)
        for name, value in (('coarse_detail', coarse_detail),
                            ('coarse_scale_embed', coarse_scale_embed)):
            if not isinstance(value, bool):
                raise ValueError(f'MSViT: {name} must be True or False, got {value!r}')
        self.coarse_embed = CoarseTokenEmbed(
            self.embed_dims, coarse_patch_size // fine_patch_size,
            in_channels * fine_patch_size**2, detail=coarse_detail,
            scale_embed=coarse_scale_embed) if (coarse_detail or coarse_scale_embed) else None

        self._register_load_state_dict_pre_hook(self._resize_pos_embed)
        self._reset_parameters()
        self._freeze()

    @classmethod
    def _arch_settings(cls, arch, **overrides) -> dict:
        """embed_dims / depth / num_heads from a preset name or dict, with overrides."""
        if isinstance(arch, str):
            if arch not in cls.arch_zoo:
                raise ValueError(f'MSViT: unknown arch={arch!r}; expected one of '
                                 f'{sorted(cls.arch_zoo)} or a dict with embed_dims, depth, '
                                 'num_heads')
            settings = dict(cls.arch_zoo[arch])
        elif isinstance(arch, dict):
            missing = {'embed_dims', 'depth', 'num_heads'} - set(arch)
            if missing:
                raise ValueError(f'MSViT: arch dict lacks {sorted(missing)}, got {arch}')
            settings = dict(arch)
        else:
            raise TypeError(f'MSViT: arch must be a str or dict, got {type(arch).__name__}')
        settings.update({k: v for k, v in overrides.items() if v is not None})
        for name in ('embed_dims', 'depth', 'num_heads'):
            check_positive_int('MSViT', name, settings[name])
        return settings

    @property
    def gate_threshold(self) -> float:
        """Eval threshold on the gate probability of FINE, a float in [0, 1]."""
        return self._gate_threshold

    @gate_threshold.setter
    def gate_threshold(self, value: float) -> None:
        self._gate_threshold = check_gate_threshold(value)

    @property
    def fine_budget(self) -> Optional[float]:
        """Budget mode's fine fraction per image in (0, 1], or None (threshold mode)."""
        return self._fine_budget

    @fine_budget.setter
    def fine_budget(self, value: Optional[float]) -> None:
        self._fine_budget = check_fine_budget(value)

    def num_fine_regions(self, num_regions: int, budget: Optional[float] = None) -> int:
        """Fine regions per image in budget mode: ``budget`` (default ``fine_budget``) times
        ``num_regions``, rounded half up, and at least one (a budget is > 0)."""
        budget = self.fine_budget if budget is None else budget
        return max(1, int(math.floor(budget * num_regions + 0.5)))

    def forward_budget(self) -> Optional[float]:
        """The budget of this forward: ``fine_budget``, or in training with
        ``train_budget_range`` a uniform draw from that range (torch's generator)."""
        if self.training and self.train_budget_range is not None:
            low, high = self.train_budget_range
            return low + (high - low) * float(torch.rand(()))
        return self.fine_budget

    def static_num_tokens(self, grid: Tuple[int, int],
                          budget: Optional[float] = None) -> Optional[int]:
        """Patch tokens per image when every image has the same count (budget mode or a forced
        scale), known from shapes alone; None in threshold mode."""
        regions = grid[0] * grid[1]
        per_fine = (self.coarse_patch_size // self.fine_patch_size)**2
        if self.force_scale is not None:
            return regions * (per_fine if self.force_scale == 'fine' else 1)
        if self.fine_budget is not None:
            return regions + (per_fine - 1) * self.num_fine_regions(regions, budget)
        return None

    # ------------------------------------------------------------------ weights
    def _reset_parameters(self) -> None:
        """timm's ViT initialisation (trunc-normal 0.02 linears, zero biases)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, module in self.named_modules():
            if name.startswith(('gate', 'coarse_embed')):
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

    def _resize_pos_embed(self, state_dict, prefix, *args, **kwargs) -> None:
        """``load_state_dict`` pre-hook: a position embedding of another square grid (a timm
        checkpoint at 224 px, say) is resampled to ``img_size``, as mmpretrain's ViT does."""
        key = prefix + 'pos_embed'
        pos = state_dict.get(key)
        if pos is None or tuple(pos.shape) == tuple(self.pos_embed.shape) or \
                pos.dim() != 3 or pos.shape[-1] != self.embed_dims:
            return  # same grid, or a width mismatch that load_state_dict reports itself
        num_patches = pos.shape[1] - self.num_prefix_tokens
        side = int(round(num_patches**0.5))
        if side * side != num_patches:
            raise ValueError(f'MSViT: checkpoint pos_embed {tuple(pos.shape)} is not a CLS '
                             'token plus a square grid; cannot resize it to '
                             f'{self.pos_grid_size}')
        state_dict[key] = resample_abs_pos_embed(pos, new_size=self.pos_grid_size,
                                                 old_size=(side, side),
                                                 num_prefix_tokens=self.num_prefix_tokens)

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

    def _freeze(self) -> None:
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            embedding = self.coarse_embed.parameters() if self.coarse_embed is not None else ()
            for param in (*self.patch_embed.parameters(), *embedding, self.pos_embed,
                          self.cls_token):
                param.requires_grad = False
        for index in range(max(self.frozen_stages, 0)):
            block = self.blocks[index]
            block.eval()
            for param in block.parameters():
                param.requires_grad = False
        if self.freeze_gate or self.force_scale is not None:
            # with the scale forced the gate never runs: nothing trainable may go without
            # gradient (DistributedDataParallel); its weights stay loadable
            self.gate.eval()
            for param in self.gate.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # ------------------------------------------------------------------ forward stages
    def fine_position_grid(self, fine_grid: Tuple[int, int]) -> Tuple[torch.Tensor,
                                                                      torch.Tensor]:
        """Position embeddings for an input of ``fine_grid`` cells (timm's interpolation).

        Returns:
            tuple: cls_pos (1, 1, D) and the fine grid (1, D, Hf, Wf).
        """
        pos = resample_abs_pos_embed(self.pos_embed, new_size=fine_grid,
                                     old_size=self.pos_grid_size,
                                     num_prefix_tokens=self.num_prefix_tokens)
        cls_pos = pos[:, :self.num_prefix_tokens]
        grid = pos[:, self.num_prefix_tokens:].transpose(1, 2).reshape(
            1, self.embed_dims, *fine_grid)
        return cls_pos, grid

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

    def all_fine_mask(self, img: torch.Tensor) -> torch.Tensor:
        """(B, Hc, Wc) all-True decisions for ``img`` (its regions after padding): the dense
        forward, for a caller that gives the decisions (teacher passes, cost counting)."""
        rows = -(-img.shape[-2] // self.coarse_patch_size)
        cols = -(-img.shape[-1] // self.coarse_patch_size)
        return torch.ones((img.shape[0], rows, cols), dtype=torch.bool, device=img.device)

    def decide_scales(self,
                      img: torch.Tensor,
                      fine_mask: Optional[torch.Tensor] = None,
                      fine_value: Optional[torch.Tensor] = None,
                      budget: Optional[float] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Decide every region of a padded input.

        Precedence: an explicit ``fine_mask`` (with an optional straight-through ``fine_value``),
        then ``force_scale``, then the gate: its top ``budget`` (default ``fine_budget``) share
        of regions per image in budget mode, else its threshold.

        Returns:
            tuple: ``fine_mask`` (B, Hc, Wc) bool; ``fine_value`` (float, the straight-through
            gate value, or None); ``gate_logits`` (None when the gate did not run).
        """
        batch = img.shape[0]
        grid = (img.shape[-2] // self.coarse_patch_size, img.shape[-1] // self.coarse_patch_size)
        if fine_mask is not None:
            if not isinstance(fine_mask, torch.Tensor) or fine_mask.dtype != torch.bool:
                kind = fine_mask.dtype if isinstance(fine_mask, torch.Tensor) else \
                    type(fine_mask).__name__
                raise ValueError(f'MSViT: fine_mask must be a bool tensor (True = fine), got '
                                 f'{kind}; pass e.g. `mask > 0.5` rather than a float or int '
                                 'mask')
            if tuple(fine_mask.shape) != (batch, *grid):
                raise ValueError(f'MSViT: fine_mask must be (B, Hc, Wc) = {(batch, *grid)} for '
                                 f'this input, got {tuple(fine_mask.shape)}')
            if fine_value is not None and fine_value.shape != fine_mask.shape:
                raise ValueError('MSViT: fine_value needs a fine_mask of the same shape, got '
                                 f'fine_value {tuple(fine_value.shape)} and fine_mask '
                                 f'{tuple(fine_mask.shape)}')
            value = None if fine_value is None else fine_value.to(img.device)
            return fine_mask.to(device=img.device), value, None
        if fine_value is not None:
            raise ValueError('MSViT: fine_value needs a fine_mask of the same shape, got '
                             f'fine_value {tuple(fine_value.shape)} and no fine_mask')
        if self.force_scale is not None:
            make = torch.ones if self.force_scale == 'fine' else torch.zeros
            return make((batch, *grid), dtype=torch.bool, device=img.device), None, None
        logits = self.gate(img)
        if self.fine_budget is not None:
            fine_mask, value = budget_decisions(logits,
                                                self.num_fine_regions(grid[0] * grid[1], budget),
                                                self.training and any(
                                                    p.requires_grad
                                                    for p in self.gate.parameters()),
                                                getattr(self.gate, 'temperature', 1.0))
        else:
            fine_mask, value = self.gate.decide(logits, self.gate_threshold)
        return fine_mask, value, logits

    def _warn_untrained_gate(self) -> None:
        if self._warned_untrained_gate or not any(p.requires_grad for p in
                                                  self.gate.parameters()):
            return
        self._warned_untrained_gate = True
        message = ('MSViT is training a gate that no gate loss or probe trains (only the task '
                   "loss reaches it, and its fine fraction is uncontrolled): use "
                   "model.type='MSViTEncoderDecoder' (or 'MSViTImageClassifier') with "
                   "gate_loss=dict(type='GBaSLoss', target=...), or set freeze_gate=True, "
                   "force_scale='fine' or a fine_budget")
        warnings.warn(message, stacklevel=3)
        print_log(message, logger='current', level=logging.WARNING)

    def embed(self,
              img: torch.Tensor,
              fine_mask: torch.Tensor,
              fine_value: Optional[torch.Tensor] = None,
              gate_logits: Optional[torch.Tensor] = None,
              out_size: Optional[Tuple[int, int]] = None,
              num_tokens: Optional[int] = None) -> MixedScaleTokens:
        """Tokenize a padded input with the given decisions (CLS and positions included);
        ``num_tokens``: the patch tokens of every image when known from shapes (static)."""
        cls_pos, pos_grid = self.fine_position_grid(
            (img.shape[-2] // self.fine_patch_size, img.shape[-1] // self.fine_patch_size))
        tokens = self.tokenizer(img, fine_mask, self.patch_embed, pos_grid, self.cls_token,
                                cls_pos, fine_value=fine_value, out_size=out_size,
                                gate_logits=gate_logits, num_tokens=num_tokens,
                                pack=self.token_packing, coarse_embed=self.coarse_embed)
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
                fine_mask: Optional[torch.Tensor] = None,
                fine_value: Optional[torch.Tensor] = None) -> Tuple[MixedScaleFeatures, ...]:
        """Run the backbone.

        Args:
            img (Tensor): (B, C, H, W); sides that are not multiples of the coarse size are
                zero-padded and the dense outputs cropped back.
            fine_mask (Tensor, optional): (B, Hc, Wc) bool decisions to use instead of the gate
                (analysis, benchmarks, the gate probe; Hc, Wc of the padded input).
            fine_value (Tensor, optional): with ``fine_mask``: a float tensor of the same shape
                whose value equals ``fine_mask`` and which carries gradient, so the loss's
                straight-through gradient with respect to each region's decision can be read
                (``tools/analysis_tools/gate_signal.py``).

        Returns:
            tuple[MixedScaleFeatures]: one per ``out_indices``; their shared ``layout`` holds the
            decisions, the gate logits and the token counts of this forward.
        """
        img, out_size = self.pad_input(img)
        budget = self.forward_budget()
        static = None if fine_mask is not None else self.static_num_tokens(
            (img.shape[-2] // self.coarse_patch_size, img.shape[-1] // self.coarse_patch_size),
            budget)
        fine_mask, fine_value, gate_logits = self.decide_scales(img, fine_mask, fine_value,
                                                                budget)
        if self.training and gate_logits is not None and self.gate_trained_by is None:
            self._warn_untrained_gate()
        return self.forward_blocks(
            self.embed(img, fine_mask, fine_value, gate_logits, out_size, static))
