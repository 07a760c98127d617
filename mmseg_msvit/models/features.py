"""Mixed-scale token outputs and their dense reconstruction."""
from typing import Optional

import torch

from .tokenizer import MixedScaleLayout


class MixedScaleFeatures:
    """The patch tokens of one tapped layer plus the layout to put them back on the grid.

    Args:
        tokens (Tensor): (B, L, D) patch tokens (CLS excluded), padded to the longest image.
        layout (MixedScaleLayout): shared by all taps of one forward.
        cls_token (Tensor, optional): (B, D) the CLS token of this layer.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # a decode head or neck that expects NCHW tensors got the backbone's raw output
        name = getattr(func, '__name__', str(func))
        raise TypeError(
            f'{name}() got an MSViT MixedScaleFeatures (mixed-scale tokens), not a tensor: an '
            "MSViT backbone needs the neck dict(type='MixedScaleToDense') (add scales=[4, 2, 1, "
            '0.5], in_channels and out_channels for UPerNet) to rebuild dense maps; see the '
            'README, "From an mmseg ViT config"')

    def __init__(self,
                 tokens: torch.Tensor,
                 layout: MixedScaleLayout,
                 cls_token: Optional[torch.Tensor] = None) -> None:
        self.tokens = tokens
        self.layout = layout
        self.cls_token = cls_token

    @property
    def fine_mask(self) -> torch.Tensor:
        """(B, Hc, Wc) bool, True = region split into fine tokens."""
        return self.layout.fine_mask

    @property
    def valid(self) -> torch.Tensor:
        """(B, L) bool, False on padding."""
        return self.layout.valid

    @property
    def num_tokens(self) -> torch.Tensor:
        """(B,) patch tokens per image (CLS excluded)."""
        return self.layout.num_tokens

    def to_dense(self) -> torch.Tensor:
        """Scatter the tokens back to the fine grid.

        Each fine token lands on its own cell; each coarse token is copied to all the cells of
        its region (2x2 for 32/16). The map is cropped to the unpadded input.

        Returns:
            Tensor: (B, D, H/S_f, W/S_f).
        """
        batch, _, dims = self.tokens.shape
        rows, cols = self.layout.fine_grid
        index = self.layout.cell_to_token[..., None].expand(-1, -1, dims)
        dense = torch.gather(self.tokens, 1, index)  # (B, Hf*Wf, D)
        dense = dense.transpose(1, 2).reshape(batch, dims, rows, cols)
        out_rows, out_cols = self.layout.out_size
        if (out_rows, out_cols) != (rows, cols):
            dense = dense[:, :, :out_rows, :out_cols]
        return dense.contiguous()

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(tokens={tuple(self.tokens.shape)}, '
                f'fine_mask={tuple(self.fine_mask.shape)}, '
                f'fine_fraction={self.fine_mask.float().mean().item():.3f})')
