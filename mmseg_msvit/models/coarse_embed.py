"""What a coarse token may carry besides its pooled-patch embedding (our options).

Without this module a coarse token is the region average-pooled to one fine patch and embedded by the shared
patch embedding: every detail smaller than a fine patch is averaged away (a striped texture whose
mean colour equals the wall's becomes wall). :class:`CoarseTokenEmbed` adds to each coarse token

* ``detail``: a learned residual from the region's own (S_c/S_f)^2 fine patch embeddings (the same
  shared patch embedding, before positions): concatenated, reduced to D (a 2x2 stride-2
  convolution over the fine embeddings, written as a linear map on the concatenation), GELU, then
  a linear layer whose weights and bias start at ZERO - so a pretrained ViT computes exactly what
  it computed before until fine-tuning moves that layer;
* ``scale_embed``: a learned vector added to every coarse token (starts at zero), telling the
  transformer which tokens cover a 2x2 region.

Cost per coarse token (counted by :func:`mmseg_msvit.models.costs.layout_macs`): the fine
embeddings, r^2 * (C * S_f^2) * D, plus r^2 * D^2 (reduction) plus D^2 (output layer) with
r = S_c / S_f; the scale embedding is an addition, not a multiply-add. Only active coarse tokens
are computed.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['CoarseTokenEmbed']


class CoarseTokenEmbed(nn.Module):
    """The extra embedding of coarse tokens (``MSViT(coarse_detail=..., coarse_scale_embed=...)``).

    Args:
        embed_dims (int): D.
        ratio (int): S_c / S_f (2 for 32/16): each coarse region holds ratio^2 fine patches.
        patch_pixels (int): C * S_f^2, the length of one fine patch's pixel row.
        detail (bool): the residual from the region's fine patch embeddings. Default: True.
        scale_embed (bool): the learned coarse-scale vector. Default: False.
    """

    def __init__(self, embed_dims: int, ratio: int, patch_pixels: int, detail: bool = True,
                 scale_embed: bool = False) -> None:
        super().__init__()
        if not (detail or scale_embed):
            raise ValueError('CoarseTokenEmbed: nothing to add; enable detail and/or scale_embed')
        self.embed_dims = embed_dims
        self.ratio = ratio
        self.patch_pixels = patch_pixels
        self.detail = detail
        if detail:
            self.reduce = nn.Linear(ratio * ratio * embed_dims, embed_dims)
            self.proj = nn.Linear(embed_dims, embed_dims)
        if scale_embed:
            self.scale_embed = nn.Parameter(torch.zeros(1, embed_dims))
        else:
            self.scale_embed = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reduction as timm's linears (trunc-normal 0.02, zero bias); the output layer and the
        scale embedding at zero, so the coarse tokens start as they were without this module."""
        if self.detail:
            nn.init.trunc_normal_(self.reduce.weight, std=0.02)
            nn.init.zeros_(self.reduce.bias)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        if self.scale_embed is not None:
            nn.init.zeros_(self.scale_embed)

    @property
    def macs_per_token(self) -> int:
        """Multiply-adds for one coarse token."""
        if not self.detail:
            return 0
        dims, cells = self.embed_dims, self.ratio * self.ratio
        return cells * self.patch_pixels * dims + cells * dims * dims + dims * dims

    def forward(self, fine_embeddings: torch.Tensor) -> torch.Tensor:
        """The extra embedding of coarse tokens.

        Args:
            fine_embeddings (Tensor): (..., ratio^2, D) the patch embeddings of each coarse
                token's fine patches in raster order within the region (ignored without
                ``detail``, may then be an empty (..., 0, D) tensor).

        Returns:
            Tensor: (..., D), added to the coarse tokens.
        """
        extra = None
        if self.detail:
            flat = fine_embeddings.flatten(-2)
            extra = self.proj(F.gelu(self.reduce(flat)))
        if self.scale_embed is not None:
            scale = self.scale_embed.expand(*fine_embeddings.shape[:-2], -1)
            extra = scale if extra is None else extra + scale
        return extra
