"""MSViT: a ViT whose tokens are 16x16 or 32x32 patches, chosen per region by a gate.

Reads like timm's ``VisionTransformer`` (and reuses its ``Block`` and ``PatchEmbed``); parameter
names are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``,
``norm.*``), so a timm ViT/DeiT state dict loads with only the gate's keys missing and the
classifier head's keys unexpected.
"""
import math
import numbers
import os.path as osp
from functools import partial
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch.nn.modules.batchnorm import _BatchNorm

from ...analysis.macs import msvit_macs_from_tokens
from ..builder import build_component
from ..features import MixedScaleFeatures
from ..tokenizer import MixedScaleTokenizer


def load_timm_state_dict(path: str) -> dict:
    """Read a timm / DeiT / mmengine checkpoint file (.pth, .pt, .bin or .safetensors).

    Unwraps the usual containers (``state_dict``, ``model``, ``module``) and strips a leading
    ``module.`` (DataParallel). Loaded with ``weights_only=True``: a checkpoint is not code.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'MSViT: pretrained checkpoint {path!r} does not exist. Weights cannot be downloaded '
            'here: save a timm/DeiT state dict to a local file (e.g. '
            "`torch.save(timm.create_model('vit_small_patch16_224', pretrained=True)"
            ".state_dict(), 'vit_small.pth')` on a machine with internet) and point "
            'init_cfg.checkpoint at it.')
    from ..checkpoints import read_checkpoint, state_dict_of
    return state_dict_of(read_checkpoint(path, 'MSViT: pretrained checkpoint'))


def _is_int(value) -> bool:
    """An integer that is not a bool (``True`` is not a size)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    """A real number (NaN and inf included) that is not a bool; strings are not numbers."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive_int(name: str, value) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f'MSViT: {name} must be a positive int, got {value!r}')


def _check_rate(name: str, value) -> None:
    if not _is_real(value) or not 0 <= value < 1:  # NaN fails the comparison
        raise ValueError(f'MSViT: {name} must be a number in [0, 1), got {value!r}')


def check_gate_threshold(value) -> float:
    """Return ``value`` as a float if it is a real number in [0, 1] (not bool/str/NaN)."""
    if not _is_real(value) or not 0 <= value <= 1:  # NaN fails the comparison
        raise ValueError('MSViT: gate_threshold must be a number in [0, 1] (the gate '
                         f'probability above which a region is fine), got {value!r}')
    return float(value)


@MODELS.register_module()
class MSViT(BaseModule):
    """Mixed-scale Vision Transformer backbone.

    A gate (:class:`MixedScaleGate`) scores every ``coarse_patch_size`` region of the input; the
    region becomes one coarse token (the region average-pooled to ``fine_patch_size`` and embedded
    by the shared patch embedding) or ``(coarse/fine)^2`` fine tokens. Only active tokens enter the
    transformer; a batch is padded to its longest image with a key mask.

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
        gate_threshold (float): eval threshold on the gate probability; may be changed after
            building (``model.backbone.gate_threshold = 0.7``). Default: 0.5.
        gate_gradient (str): how the task loss reaches the gate in training: 'scale' (tokens
            multiplied by the straight-through gate value, docs/method.md) or 'mix' (tokens
            straight-through interpolated towards the other scale's content, our option; see
            :class:`MixedScaleTokenizer`). Inference is identical. Default: 'scale'.
        gate_warmup_iters (int): for the first ``gate_warmup_iters`` training iterations (read
            from mmengine's message hub, so resume-exact) the gate is not used: every region is
            fine with probability ``warmup_fine_fraction``, independently, so the transformer
            learns both scales before the gate's decisions start to count; no gate loss is
            computed then. Meant for training from scratch, where the task loss tells the gate
            nothing while the features are still random (our option). Default: 0.
        warmup_fine_fraction (float): in [0, 1], see above. Default: 0.5.
        freeze_gate (bool): keep the gate's parameters fixed (requires_grad False). Default: False.
        gate_init (dict, optional): ``dict(checkpoint='gate.pth', freeze=False)`` loads a gate
            written by ``tools/transfer_gate.py`` (from any MSViT, any width, any task) after the
            backbone's own initialisation; patch sizes and, when the segmentor/classifier sets
            ``input_normalisation``, the input normalisation must match (checked, clear error).
            ``freeze=True`` keeps it fixed, as ``freeze_gate``.
        pretrained (str, optional): shorthand for ``init_cfg=dict(type='Pretrained',
            checkpoint=pretrained)`` (what mmseg's segmentor ``pretrained=`` passes down).
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint='file.pth' or
            '.safetensors', prefix=None)`` loads a local timm/DeiT checkpoint, resizing its
            position embeddings to ``img_size``; otherwise timm's ViT initialisation.

    Outputs:
        tuple[MixedScaleFeatures]: one per ``out_indices``; ``.to_dense()`` gives (B, D, H/16, W/16).
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
                 gate_gradient: str = 'scale',
                 gate_warmup_iters: int = 0,
                 warmup_fine_fraction: float = 0.5,
                 freeze_gate: bool = False,
                 gate_init: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('MSViT: give either pretrained or init_cfg, not both')
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        if isinstance(arch, str):
            if arch not in self.arch_zoo:
                raise ValueError(f'MSViT: unknown arch={arch!r}; expected one of '
                                 f'{sorted(self.arch_zoo)} or a dict with embed_dims, depth, '
                                 'num_heads')
            arch_settings = dict(self.arch_zoo[arch])
        elif isinstance(arch, dict):
            missing = {'embed_dims', 'depth', 'num_heads'} - set(arch)
            if missing:
                raise ValueError(f'MSViT: arch dict lacks {sorted(missing)}, got {arch}')
            arch_settings = dict(arch)
        else:
            raise TypeError(f'MSViT: arch must be a str or dict, got {type(arch).__name__}')
        for name, value in (('embed_dims', embed_dims), ('depth', depth),
                            ('num_heads', num_heads)):
            if value is not None:
                arch_settings[name] = value
        for name in ('embed_dims', 'depth', 'num_heads'):
            _check_positive_int(name, arch_settings[name])
        self.embed_dims = arch_settings['embed_dims']
        self.depth = arch_settings['depth']
        self.num_heads = arch_settings['num_heads']
        for name, value in (('fine_patch_size', fine_patch_size),
                            ('coarse_patch_size', coarse_patch_size),
                            ('in_channels', in_channels)):
            _check_positive_int(name, value)
        if not _is_real(mlp_ratio) or not 0 < mlp_ratio < math.inf:
            raise ValueError(f'MSViT: mlp_ratio must be a finite number > 0, got {mlp_ratio!r}')
        for name, value in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                            ('drop_path_rate', drop_path_rate)):
            _check_rate(name, value)
        if not _is_int(frozen_stages) or not -1 <= frozen_stages <= self.depth:
            raise ValueError(f'MSViT: frozen_stages must be an int in -1..{self.depth} (-1: '
                             f'nothing frozen, depth={self.depth}: every block), got '
                             f'{frozen_stages!r}')
        if not (_is_int(out_indices) or (isinstance(out_indices, Sequence) and
                                         not isinstance(out_indices, str) and
                                         len(out_indices) > 0 and
                                         all(_is_int(i) for i in out_indices))):
            raise ValueError('MSViT: out_indices must be an int or a non-empty sequence of ints '
                             f'(block indices, -1 = last), got {out_indices!r}')
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
        if _is_int(img_size):
            sides = (img_size, img_size)
        elif isinstance(img_size, Sequence) and len(img_size) == 2 and \
                all(_is_int(side) for side in img_size):
            sides = tuple(img_size)
        else:
            sides = None
        if sides is None or min(sides) < 1:
            raise ValueError('MSViT: img_size must be a positive int or a pair of positive ints, '
                             f'got {img_size!r}')
        self.img_size = tuple(int(side) for side in sides)
        if self.img_size[0] % coarse_patch_size or self.img_size[1] % coarse_patch_size:
            raise ValueError(f'MSViT: img_size={self.img_size} must be a multiple of '
                             f'coarse_patch_size={coarse_patch_size}')
        self.fine_patch_size = fine_patch_size
        self.coarse_patch_size = coarse_patch_size
        self.in_channels = in_channels
        self.mlp_ratio = mlp_ratio
        self.force_scale = force_scale
        self.gate_threshold = gate_threshold  # validated by the property's setter
        self.final_norm = final_norm
        self.with_cp = with_cp
        self.norm_eval = norm_eval
        self.frozen_stages = frozen_stages
        if gate_warmup_iters < 0:
            raise ValueError(f'MSViT: gate_warmup_iters must be >= 0, got {gate_warmup_iters}')
        if not 0 <= warmup_fine_fraction <= 1:
            raise ValueError('MSViT: warmup_fine_fraction must lie in [0, 1], got '
                             f'{warmup_fine_fraction}')
        self.gate_warmup_iters = int(gate_warmup_iters)
        self.warmup_fine_fraction = float(warmup_fine_fraction)
        self.freeze_gate = freeze_gate or bool((gate_init or {}).get('freeze', False))
        if gate_init is not None and 'checkpoint' not in gate_init:
            raise ValueError(f'MSViT: gate_init needs a checkpoint, got {gate_init}')
        self.gate_init = gate_init
        # (mean, std, bgr_to_rgb) of the model's data preprocessor, set by the segmentor or
        # classifier so that a transferred gate's normalisation can be checked
        self.input_normalisation: Optional[dict] = None

        if _is_int(out_indices):
            out_indices = [out_indices]
        self.out_indices = []
        for index in out_indices:
            resolved = index + self.depth if index < 0 else index
            if not 0 <= resolved < self.depth:
                raise ValueError(f'MSViT: out_indices contains {index}, outside a depth of '
                                 f'{self.depth}')
            self.out_indices.append(resolved)

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
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        drop_path = [x.item() for x in torch.linspace(0, drop_path_rate, self.depth)]
        self.blocks = nn.ModuleList([
            Block(dim=self.embed_dims, num_heads=self.num_heads, mlp_ratio=mlp_ratio,
                  qkv_bias=qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=drop_path[i], norm_layer=norm_layer) for i in range(self.depth)
        ])
        # no final LayerNorm parameters when they are not used (final_norm=False): a trainable
        # parameter without gradient stops DistributedDataParallel at its second iteration
        self.norm = norm_layer(self.embed_dims) if final_norm else nn.Identity()

        gate_cfg = dict(type='MixedScaleGate') if gate is None else dict(gate)
        gate_cfg.setdefault('coarse_patch_size', coarse_patch_size)
        gate_cfg.setdefault('in_channels', in_channels)
        if gate_cfg['coarse_patch_size'] != coarse_patch_size:
            raise ValueError(f"MSViT: gate coarse_patch_size={gate_cfg['coarse_patch_size']} "
                             f'differs from the backbone coarse_patch_size={coarse_patch_size}')
        self.gate = build_component(gate_cfg)
        self.tokenizer = MixedScaleTokenizer(fine_patch_size, coarse_patch_size, gate_gradient)

        # state of the last forward, read by the segmentor / classifier (no second pass)
        self.last_gate_logits: Optional[torch.Tensor] = None
        self.last_fine_mask: Optional[torch.Tensor] = None
        self.last_num_tokens: Optional[torch.Tensor] = None
        self.last_macs: Optional[torch.Tensor] = None
        self._recording: Optional[dict] = None

        self._reset_parameters()
        self._freeze()

    # ------------------------------------------------------------------ init / freezing
    def _reset_parameters(self) -> None:
        """timm's ViT initialisation (trunc-normal 0.02 linears, zero biases)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, module in self.named_modules():
            if name.startswith('gate'):
                continue
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def gate_threshold(self) -> float:
        """Eval threshold on the gate probability of FINE, a float in [0, 1]."""
        return self._gate_threshold

    @gate_threshold.setter
    def gate_threshold(self, value: float) -> None:
        self._gate_threshold = check_gate_threshold(value)

    @property
    def last_gate_probs(self) -> Optional[torch.Tensor]:
        """(B, Hc, Wc) probability of FINE from the last forward (with grad), None if forced."""
        return None if self.last_gate_logits is None else torch.sigmoid(self.last_gate_logits)

    def init_weights(self) -> None:
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            self.load_pretrained(self.init_cfg['checkpoint'], prefix=self.init_cfg.get('prefix'))
        else:
            super().init_weights()
        if self.gate_init is not None:
            self.load_gate(self.gate_init['checkpoint'])
        self._is_init = True

    def load_gate(self, path: str) -> dict:
        """Load a gate checkpoint written by ``tools/transfer_gate.py``; returns its meta."""
        from ..checkpoints import describe_checkpoint, read_checkpoint
        from ..gate_transfer import check_gate_compatible
        gate = read_checkpoint(path, 'MSViT: gate checkpoint')
        kind = describe_checkpoint(gate)
        if not kind.startswith('a gate file'):
            raise ValueError(f'MSViT: gate_init checkpoint {path!r} is {kind}, not a gate file; '
                             f'extract its gate first: python tools/transfer_gate.py {path} '
                             'gate.pth, then set gate_init=dict(checkpoint=\'gate.pth\')')
        check_gate_compatible(gate['meta'], self.coarse_patch_size, self.fine_patch_size,
                              self.in_channels, self.input_normalisation, path)
        try:
            self.gate.load_state_dict(gate['state_dict'])
        except RuntimeError as err:
            raise ValueError(f'MSViT: gate in {path!r} (hidden_dims '
                             f"{gate['meta'].get('hidden_dims')}) does not match this model's "
                             f'gate (hidden_dims {list(self.gate.hidden_dims)}): {err}') from err
        self._freeze()
        print_log(f"MSViT: gate loaded from {path} (source {gate['meta'].get('source')}, "
                  f"{'frozen' if self.freeze_gate else 'trainable'})", logger='current')
        return gate['meta']

    def load_pretrained(self, path: str, prefix: Optional[str] = None) -> Tuple[list, list]:
        """Load a local timm/DeiT ViT checkpoint.

        Position embeddings are resized to ``img_size``; the width and patch size must match.

        Returns:
            tuple: (missing_keys, unexpected_keys) of the load.
        """
        state = load_timm_state_dict(path)
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not state:
                raise KeyError(f'MSViT: no key of {path!r} starts with prefix={prefix!r}')
        proj = state.get('patch_embed.proj.weight')
        if proj is None:
            raise KeyError(f'MSViT: {path!r} has no patch_embed.proj.weight; is it a timm/DeiT '
                           'ViT checkpoint?')
        if proj.shape[0] != self.embed_dims:
            raise ValueError(f'MSViT: checkpoint {path!r} has embed width {proj.shape[0]}, the '
                             f'backbone has embed_dims={self.embed_dims}')
        if tuple(proj.shape[1:]) != (self.in_channels, self.fine_patch_size,
                                     self.fine_patch_size):
            raise ValueError(f'MSViT: checkpoint {path!r} patch embedding is '
                             f'{tuple(proj.shape[1:])} (C, p, p), the backbone expects '
                             f'({self.in_channels}, {self.fine_patch_size}, '
                             f'{self.fine_patch_size})')
        if 'pos_embed' in state:
            pos = state['pos_embed']
            num_patches = pos.shape[1] - self.num_prefix_tokens
            side = int(round(num_patches**0.5))
            if side * side != num_patches:
                raise ValueError(f'MSViT: checkpoint pos_embed {tuple(pos.shape)} is not a CLS '
                                 'token plus a square grid')
            state['pos_embed'] = resample_abs_pos_embed(
                pos, new_size=self.pos_grid_size, old_size=(side, side),
                num_prefix_tokens=self.num_prefix_tokens)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith('gate.')]
        print_log(f'MSViT: loaded {path}; missing (besides the gate): {missing}; unexpected: '
                  f'{unexpected}', logger='current')
        return missing, unexpected

    def _freeze(self) -> None:
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            for param in (*self.patch_embed.parameters(), self.pos_embed, self.cls_token):
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

    # ------------------------------------------------------------------ statistics
    def _record_forward(self, fine_mask: torch.Tensor, num_tokens: torch.Tensor) -> None:
        """Keep the last forward's decisions and cost; accumulate them while recording."""
        num_regions = fine_mask.shape[1] * fine_mask.shape[2]
        num_coarse = (~fine_mask).flatten(1).sum(1)
        self.last_fine_mask = fine_mask
        self.last_num_tokens = num_tokens
        self.last_macs = msvit_macs_from_tokens(self, num_tokens, num_coarse, num_regions,
                                                gate_ran=self.last_gate_logits is not None)
        if self._recording is None:
            return
        stats = dict(macs=self.last_macs, fine_regions=fine_mask.flatten(1).sum(1).double(),
                     regions=torch.full_like(self.last_macs, num_regions),
                     tokens=num_tokens.double(), forwards=torch.ones_like(self.last_macs))
        for key, value in stats.items():
            previous = self._recording.get(key)
            if previous is not None and previous.shape != value.shape:
                raise RuntimeError('MSViT: batch size changed while recording statistics '
                                   f'({previous.shape[0]} -> {value.shape[0]})')
            self._recording[key] = value if previous is None else previous + value

    def start_recording(self) -> None:
        """Accumulate per-image cost over the following forwards (e.g. slide windows)."""
        self._recording = {}

    def stop_recording(self) -> dict:
        """Stop and return per-image sums: macs, fine_regions, regions, tokens, forwards."""
        recording, self._recording = self._recording, None
        return recording or {}

    # ------------------------------------------------------------------ forward
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
        """Pad right/bottom to a multiple of the coarse size; return the fine cells to keep."""
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

    def decide_scales(self,
                      img: torch.Tensor,
                      fine_mask: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Return (fine_mask, fine_value) for a padded input.

        Precedence: an explicit ``fine_mask``, then ``force_scale``, then the gate.
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
            self.last_gate_logits = None
            return fine_mask.to(device=img.device), None
        if self.force_scale is not None:
            self.last_gate_logits = None
            make = torch.ones if self.force_scale == 'fine' else torch.zeros
            return make((batch, *grid), dtype=torch.bool, device=img.device), None
        if self.training and self.gate_warmup_iters and \
                MessageHub.get_current_instance().get_info('iter', 0) < self.gate_warmup_iters:
            self.last_gate_logits = None
            fine_mask = torch.rand((batch, *grid), device=img.device) < self.warmup_fine_fraction
            return fine_mask, None
        logits = self.gate(img)
        self.last_gate_logits = logits
        return self.gate.decide(logits, self.gate_threshold)

    def forward(self,
                img: torch.Tensor,
                fine_mask: Optional[torch.Tensor] = None,
                fine_value: Optional[torch.Tensor] = None) -> Tuple[MixedScaleFeatures, ...]:
        """Run the backbone.

        Args:
            img (Tensor): (B, C, H, W); sides that are not multiples of the coarse size are
                zero-padded and the dense outputs cropped back.
            fine_mask (Tensor, optional): (B, Hc, Wc) bool decisions to use instead of the gate
                (for analysis, benchmarks and the segmentor's gate probe; Hc, Wc of the padded
                input).
            fine_value (Tensor, optional): with ``fine_mask``: a float tensor of the same shape
                whose value equals ``fine_mask`` and which carries gradient, so the loss's
                straight-through gradient with respect to each region's decision can be read
                (``tools/analysis_tools/gate_signal.py``).

        Returns:
            tuple[MixedScaleFeatures]: one per ``out_indices``.
        """
        if not isinstance(img, torch.Tensor) or img.dim() != 4:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f'MSViT: img must be a 4-D (B, C, H, W) tensor, got {shape}')
        if img.shape[0] < 1:
            raise ValueError('MSViT: img must hold at least one image (batch size >= 1), got '
                             f'shape {tuple(img.shape)}')
        if img.shape[1] != self.in_channels:
            raise ValueError(f'MSViT: img must have in_channels={self.in_channels} channels '
                             f'(B, C, H, W), got shape {tuple(img.shape)}')
        img, out_size = self.pad_input(img)
        if fine_value is not None:
            if fine_mask is None or fine_value.shape != fine_mask.shape:
                raise ValueError('MSViT: fine_value needs a fine_mask of the same shape, got '
                                 f'fine_value {tuple(fine_value.shape)} and fine_mask '
                                 f'{None if fine_mask is None else tuple(fine_mask.shape)}')
        fine_mask, gate_value = self.decide_scales(img, fine_mask)
        fine_value = gate_value if fine_value is None else fine_value.to(img.device)
        cls_pos, pos_grid = self.fine_position_grid(
            (img.shape[-2] // self.fine_patch_size, img.shape[-1] // self.fine_patch_size))
        tokens, attn_mask, layout = self.tokenizer(
            img, fine_mask, self.patch_embed, pos_grid, self.cls_token, cls_pos,
            fine_value=fine_value, out_size=out_size)
        self._record_forward(fine_mask, layout.num_tokens)
        x = self.pos_drop(tokens)

        outs = []
        for index, block in enumerate(self.blocks):
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
            if index == self.depth - 1 and self.final_norm:
                x = self.norm(x)
            if index in self.out_indices:
                outs.append(MixedScaleFeatures(x[:, self.num_prefix_tokens:], layout, x[:, 0]))
        return tuple(outs)
