"""Gates: one logit per coarse region (the probability of FINE is its sigmoid).

A gate only scores; the policy decides (:mod:`mmseg_msvit.models.policy`: threshold or budget,
with or without the relaxation noise of a gate in training). What the backbone asks of a gate:
``forward(img) -> (B, Hc, Wc)`` logits, ``macs_per_region`` (int, counted in every image's
cost) and ``temperature``: the Gumbel-sigmoid temperature while the gate trains, or None for a
gate with nothing to train (hard decisions).
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from .arguments import check_bool, check_positive_int, check_positive_ints
from .tokenizer import coarsen, regions_to_rows


@MODELS.register_module()
class MixedScaleGate(BaseModule):
    """Scores every coarse region: the logit of splitting it into fine tokens.

    The gate reads the normalised pixels of each coarse patch (``in_channels`` x
    ``coarse_patch_size`` x ``coarse_patch_size``) through a small MLP and nothing else, so it does
    not depend on the backbone's width and transfers across ViT sizes and tasks (our decision, see
    docs/method.md, section 2). With the defaults (3072 -> 256 -> 256 -> 1, GELU) it costs
    0.85 MMACs per region, 41.8 MMACs for the 49 regions of a 224 px image: 0.9% of ViT-S/16.

    Decisions (``p = sigmoid(logit)`` is the probability that a region is FINE; made by the
    policy, :func:`mmseg_msvit.models.policy.threshold_decisions` / ``budget_decisions``, with
    this gate's ``temperature`` while it trains):

    * training: Gumbel-sigmoid relaxation ``soft = sigmoid((logit + g) / temperature)`` with
      logistic noise ``g``, then straight-through: the forward value is ``soft > 0.5`` (hard 0/1),
      the backward pass uses the gradient of ``soft``;
    * eval: deterministic ``p > threshold``. Raising the threshold keeps more regions coarse
      (fewer tokens, fewer MACs) without retraining.

    Args:
        coarse_patch_size (int): side of a coarse region in pixels. Default: 32.
        in_channels (int): image channels. Default: 3.
        hidden_dims (Sequence[int]): hidden widths of the MLP. Default: (256, 256).
        temperature (float): Gumbel-sigmoid temperature (> 0). Default: 1.0.
        init_fine_fraction (float, optional): if given, the output bias is set to
            ``logit(init_fine_fraction)`` so that the gate starts near that fine fraction
            (must lie in (0, 1)). Default: None (bias 0, i.e. p = 0.5).
        content_prior (bool): our option (not the paper's): add ``w * c`` to the MLP's logit,
            where ``c`` is the :class:`ContentGate` score of the region (log of the pixel energy
            the coarse token loses) minus its mean over the image, and ``w`` a learned scalar
            (starts at 1). The gate then starts as the training-free content ranking and learns
            corrections to it; still one region at a time, from its pixels alone. Default: False.
        fine_patch_size (int): S_f, used by ``content_prior``. Default: 16.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 coarse_patch_size: int = 32,
                 in_channels: int = 3,
                 hidden_dims: Sequence[int] = (256, 256),
                 temperature: float = 1.0,
                 init_fine_fraction: Optional[float] = None,
                 content_prior: bool = False,
                 fine_patch_size: int = 16,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        check_positive_int('MixedScaleGate', 'coarse_patch_size', coarse_patch_size,
                           expected='>= 1 (an int)')
        check_positive_int('MixedScaleGate', 'in_channels', in_channels, expected='an int >= 1')
        hidden_dims = check_positive_ints('MixedScaleGate', 'hidden_dims', hidden_dims)
        if temperature <= 0:
            raise ValueError(f'MixedScaleGate: temperature must be > 0, got {temperature}')
        if init_fine_fraction is not None and not 0 < init_fine_fraction < 1:
            raise ValueError('MixedScaleGate: init_fine_fraction must lie in (0, 1), got '
                             f'{init_fine_fraction}')
        self.coarse_patch_size = coarse_patch_size
        self.in_channels = in_channels
        self.hidden_dims = tuple(hidden_dims)
        self.temperature = temperature
        self.init_fine_fraction = init_fine_fraction
        widths = (in_channels * coarse_patch_size**2, *self.hidden_dims, 1)
        layers = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(width_in, width_out))
            if index < len(widths) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        if not isinstance(content_prior, bool):
            raise ValueError(f'MixedScaleGate: content_prior must be True or False, got '
                             f'{content_prior!r}')
        self.content_prior = content_prior
        if content_prior:
            self.content = ContentGate(coarse_patch_size, fine_patch_size, in_channels)
            self.content_weight = nn.Parameter(torch.ones(()))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self.content_prior:
            nn.init.ones_(self.content_weight)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        if self.init_fine_fraction is not None:
            fraction = self.init_fine_fraction
            nn.init.constant_(self.mlp[-1].bias, math.log(fraction / (1 - fraction)))

    def init_weights(self) -> None:
        if self.init_cfg is None:
            self._reset_parameters()
        else:
            super().init_weights()

    @property
    def macs_per_region(self) -> int:
        """Multiply-adds of the MLP (and of the content score) for one coarse region."""
        mlp = sum(m.in_features * m.out_features for m in self.mlp if isinstance(m, nn.Linear))
        return mlp + (self.content.macs_per_region if self.content_prior else 0)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Gate logits.

        Args:
            img (Tensor): (B, C, H, W) normalised image, H and W multiples of the coarse size.

        Returns:
            Tensor: logits (B, H/S_c, W/S_c); sigmoid gives the probability of FINE.
        """
        if img.shape[1] != self.in_channels:
            raise ValueError(f'MixedScaleGate: expected {self.in_channels} input channels, got '
                             f'image of shape {tuple(img.shape)}')
        rows = regions_to_rows(img, self.coarse_patch_size)
        logits = self.mlp(rows).squeeze(-1)
        if self.content_prior:
            score = self.content(img)
            logits = logits + self.content_weight * (score - score.mean((-2, -1), keepdim=True))
        return logits


@MODELS.register_module()
class ContentGate(BaseModule):
    """A gate without parameters: a region's score is the pixel energy that its coarse token
    loses (training-free; our choice for the project's content baseline).

    A coarse token is made from the region average-pooled by ``coarse/fine`` (2x2 pixels for
    32/16); the fine tokens see every pixel. The score is the mean squared difference between the
    region's normalised pixels and that pooled version, i.e. exactly what the coarse token's input
    throws away: zero on flat or smoothly shaded regions, large on edges, stripes and small
    objects. Why this one: it costs two passes over the pixels and needs no training (how it
    compares with random regions: docs/method.md, "Budget mode and the content gate"). Its
    logits are
    ``log(energy + eps)``: use it with a fine budget (``MSViT(fine_budget=...)``); in threshold
    mode a region is fine when its energy exceeds ``threshold / (1 - threshold)``.

    With ``structure_px=s`` (our option) the score is instead the variance, within the region,
    of the image averaged over s x s pixels: the region's structure at s px and coarser (edges
    between areas, objects), blind to grain finer than s px (gravel, noise), which the pixel
    energy counts as detail. Both scores rank the standard synthetic scenes' regions alike; on
    scenes with grain textures the structure score finds more of the regions whose label varies
    (docs/study.md, "A structure score for the content gate").

    With ``contrast=True`` as well, the score adds the variance, within the region, of the local
    contrast (the standard deviation of the pixels inside each s x s cell): a border between a
    flat area and a texture whose mean colour is the flat area's (stripes on a wall) is invisible
    to the s x s averages but not to their contrast, while a texture that covers the whole
    region (gravel) has the same contrast in every cell and stays coarse.

    Args:
        coarse_patch_size (int): S_c. Default: 32.
        fine_patch_size (int): S_f, a divisor of S_c. Default: 16.
        in_channels (int): Default: 3.
        eps (float): added before the log. Default: 1e-6.
        structure_px (int, optional): s, a divisor of S_c: score the variance of the region's
            s x s pixel averages. None: the pixel energy the coarse token loses. Default: None.
        contrast (bool): with ``structure_px``, add the variance of the s x s cells' standard
            deviations. Default: False.
    """
    temperature = None  # nothing to train: hard decisions

    def __init__(self, coarse_patch_size: int = 32, fine_patch_size: int = 16,
                 in_channels: int = 3, eps: float = 1e-6, structure_px: Optional[int] = None,
                 contrast: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        for name, value in (('coarse_patch_size', coarse_patch_size),
                            ('fine_patch_size', fine_patch_size), ('in_channels', in_channels)):
            check_positive_int('ContentGate', name, value)
        if coarse_patch_size % fine_patch_size:
            raise ValueError(f'ContentGate: fine_patch_size={fine_patch_size} must divide '
                             f'coarse_patch_size={coarse_patch_size}')
        if structure_px is not None:
            check_positive_int('ContentGate', 'structure_px', structure_px,
                               f'None or a positive int dividing coarse_patch_size='
                               f'{coarse_patch_size} (and smaller)')
            if coarse_patch_size % structure_px or structure_px >= coarse_patch_size:
                raise ValueError(f'ContentGate: structure_px must divide coarse_patch_size='
                                 f'{coarse_patch_size} and be smaller, got {structure_px}')
        check_bool('ContentGate', 'contrast', contrast)
        if contrast and structure_px is None:
            raise ValueError('ContentGate: contrast=True needs structure_px (the cells whose '
                             'contrast is compared), got structure_px=None')
        self.coarse_patch_size = coarse_patch_size
        self.ratio = coarse_patch_size // fine_patch_size
        self.in_channels = in_channels
        self.eps = eps
        self.structure_px = structure_px
        self.contrast = contrast

    @classmethod
    def like(cls, backbone) -> 'ContentGate':
        """A pixel-energy content gate for ``backbone`` (its patch sizes and channels, on its
        device), to substitute in a policy:
        ``ScalePolicy.with_budget(b, gate=ContentGate.like(backbone))``."""
        return cls(coarse_patch_size=backbone.coarse_patch_size,
                   fine_patch_size=backbone.fine_patch_size,
                   in_channels=backbone.in_channels).to(backbone.cls_token.device)

    @property
    def score_options(self) -> dict:
        """The options that choose the score (not in a state dict: the gate has no
        parameters); checkpoints record them to refuse a resume under another score."""
        return dict(structure_px=self.structure_px, contrast=self.contrast)

    @property
    def macs_per_region(self) -> int:
        """The pooling and the squared residual: two multiply-adds per pixel and channel; with
        ``structure_px``, one per pixel and channel for the s x s averages and two per average
        for the variance; with ``contrast`` too, two more per pixel and channel for the squared
        residuals about the cells' averages, two per cell for their standard deviations and two
        for their variance."""
        pixels = self.in_channels * self.coarse_patch_size**2
        if self.structure_px is None:
            return 2 * pixels
        cells = pixels // self.structure_px**2
        if self.contrast:
            return 3 * pixels + 6 * cells
        return pixels + 2 * cells

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """(B, Hc, Wc) logits ``log(energy + eps)`` of an image whose sides are multiples of
        the coarse size."""
        if img.shape[1] != self.in_channels:
            raise ValueError(f'ContentGate: expected {self.in_channels} input channels, got '
                             f'image of shape {tuple(img.shape)}')
        if self.structure_px is None:
            pooled = coarsen(img, self.ratio)
            residual = img - F.interpolate(pooled, scale_factor=self.ratio, mode='nearest')
            energy = F.avg_pool2d(residual.square().mean(1, keepdim=True),
                                  self.coarse_patch_size)
        else:  # the variance of the region's s x s averages (and of their contrast)
            averages = F.avg_pool2d(img, self.structure_px)
            per_region = self.coarse_patch_size // self.structure_px
            energy = self._region_variance(averages, per_region)
            if self.contrast:  # each cell's spread about its own mean (two passes: exact)
                residual = img - F.interpolate(averages, scale_factor=self.structure_px,
                                               mode='nearest')
                deviation = F.avg_pool2d(residual.square(), self.structure_px).sqrt()
                energy = energy + self._region_variance(deviation, per_region)
        return torch.log(energy[:, 0] + self.eps)

    @staticmethod
    def _region_variance(cells: torch.Tensor, per_region: int) -> torch.Tensor:
        """(B, 1, Hc, Wc): the variance of the cells in each per_region x per_region block,
        averaged over channels."""
        means = F.avg_pool2d(cells, per_region)
        residual = cells - F.interpolate(means, scale_factor=per_region, mode='nearest')
        return F.avg_pool2d(residual.square().mean(1, keepdim=True), per_region)


@MODELS.register_module()
class RandomGate(BaseModule):
    """A gate without parameters that ignores the image: every region gets an independent
    standard-normal score at every forward (a fresh draw from torch's global generator).

    With a fine budget (``MSViT(fine_budget=f)``) it keeps a uniformly random ``round(f * regions)``
    regions fine per image: the control that any gate must beat (``tools/analysis_tools/
    msvit_study.py``). In threshold mode a region is fine with probability ``1 - threshold``.

    Args:
        coarse_patch_size (int): S_c. Default: 32.
        in_channels (int): Default: 3.
    """
    macs_per_region = 0
    temperature = None  # nothing to train: hard decisions

    def __init__(self, coarse_patch_size: int = 32, in_channels: int = 3, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        check_positive_int('RandomGate', 'coarse_patch_size', coarse_patch_size)
        check_positive_int('RandomGate', 'in_channels', in_channels)
        self.coarse_patch_size = coarse_patch_size
        self.in_channels = in_channels

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """(B, Hc, Wc) random logits for an image whose sides are multiples of the coarse size."""
        batch, _, height, width = img.shape
        size = self.coarse_patch_size
        return torch.randn(batch, height // size, width // size, device=img.device,
                           dtype=img.dtype)

