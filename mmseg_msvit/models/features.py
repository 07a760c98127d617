"""Mixed-scale token outputs and their dense reconstruction."""
from typing import Optional, Sequence

import torch

from .tokenizer import MixedScaleLayout


class MixedScaleFeatures:
    """The patch tokens of one tapped layer plus the layout to put them back on the grid.

    Args:
        tokens (Tensor): (B, L, D) patch tokens (CLS excluded), padded to the longest image; or,
            when ``layout.packed`` is set, the (N, D) packed sequence of the layer (every
            image's CLS and patch tokens, :mod:`mmseg_msvit.models.packed`). ``.tokens`` and
            ``.cls_token`` then unpack on first use, and :meth:`to_dense` reads the packed
            sequence directly.
        layout (MixedScaleLayout): shared by all taps of one forward.
        cls_token (Tensor, optional): (B, D) the CLS token of this layer (not given when
            packed: it is in the sequence).
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
        self.layout = layout
        if layout.packed is None:
            self._packed = None
            self.tokens, self.cls_token = tokens, cls_token
        else:
            if tokens.dim() != 2 or tokens.shape[0] != layout.packed.total:
                raise ValueError('MixedScaleFeatures: packed tokens must be (N, D) with N = '
                                 f'{layout.packed.total}, got {tuple(tokens.shape)}')
            self._packed = tokens
            self._tokens = self._cls = None

    @property
    def tokens(self) -> torch.Tensor:
        """(B, L, D) patch tokens (CLS excluded), zero on padding."""
        if self._packed is not None and self._tokens is None:
            valid = self.layout.valid
            rank = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
            # padding positions point at the image's own CLS (rank -1) and are zeroed
            self._tokens = self._packed[self._packed_index(torch.where(valid, rank, -1))] * \
                valid[..., None]
        return self._tokens

    @tokens.setter
    def tokens(self, value: torch.Tensor) -> None:
        self._tokens = value

    @property
    def cls_token(self) -> Optional[torch.Tensor]:
        """(B, D) the CLS token of this layer (None if not kept)."""
        if self._packed is not None and self._cls is None:
            self._cls = self._packed[self.layout.packed.starts]
        return self._cls

    @cls_token.setter
    def cls_token(self, value: Optional[torch.Tensor]) -> None:
        self._cls = value

    def _packed_index(self, rank: torch.Tensor) -> torch.Tensor:
        """Packed position of each image's patch token of the given ``rank`` (B, ...) (its
        position in the image's sequence, CLS excluded)."""
        starts = self.layout.packed.starts
        return starts.view(-1, *([1] * (rank.dim() - 1))) + 1 + rank

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
        rows, cols = self.layout.fine_grid
        if self._packed is not None:  # straight from the packed sequence
            batch, dims = self.layout.packed.starts.shape[0], self._packed.shape[-1]
            dense = self._packed[self._packed_index(self.layout.cell_to_token)]
        else:
            batch, _, dims = self.tokens.shape
            index = self.layout.cell_to_token[..., None].expand(-1, -1, dims)
            dense = torch.gather(self.tokens, 1, index)  # (B, Hf*Wf, D)
        dense = dense.transpose(1, 2).reshape(batch, dims, rows, cols)
        out_rows, out_cols = self.layout.out_size
        if (out_rows, out_cols) != (rows, cols):
            dense = dense[:, :, :out_rows, :out_cols]
        return dense.contiguous()

    def __repr__(self) -> str:
        shape = tuple(self._packed.shape) if self._packed is not None else \
            tuple(self.tokens.shape)
        return (f'{self.__class__.__name__}(tokens={shape}, '
                f'fine_mask={tuple(self.fine_mask.shape)}, '
                f'fine_fraction={self.fine_mask.float().mean().item():.3f})')


def _flatten_features(features: MixedScaleFeatures):
    """pytree: the tensors a MixedScaleFeatures holds (packed sequence, or tokens and CLS) and its
    layout (a NamedTuple, itself a pytree); the context says which form."""
    if features._packed is not None:
        return [features._packed, features.layout], 'packed'
    return [features.tokens, features.cls_token, features.layout], 'padded'


def _unflatten_features(children, context) -> MixedScaleFeatures:
    if context == 'packed':
        return MixedScaleFeatures(children[0], children[1])
    return MixedScaleFeatures(children[0], children[2], children[1])


# torch.export / torch.compile / torch.utils._pytree see the tensors inside the backbone's outputs
torch.utils._pytree.register_pytree_node(
    MixedScaleFeatures, _flatten_features, _unflatten_features,
    serialized_type_name='mmseg_msvit.models.features.MixedScaleFeatures')


class MixedScaleMaps(tuple):
    """The backbone's taps as dense maps (``MSViT(out_type='featmap')``): a tuple of (B, D,
    H/S_f, W/S_f) tensors, which any mmseg neck or head reads as it reads a ViT's, carrying the
    forward's :attr:`layout` (which regions were fine) for whoever needs the decisions: the
    segmentor's cost, the mixed-scale neck's unpooling and decoding.

    Args:
        maps (Sequence[Tensor]): one (B, D, H/S_f, W/S_f) map per tap (each coarse token on all
            the cells of its region).
        layout (MixedScaleLayout): the forward's layout.
    """

    def __new__(cls, maps: Sequence[torch.Tensor], layout: MixedScaleLayout):
        obj = super().__new__(cls, maps)
        obj.layout = layout
        return obj

    def __reduce__(self):  # copy / pickle keep the layout
        return (self.__class__, (tuple(self), self.layout))


# torch.export returns it (the maps and the layout's tensors); slicing gives a plain tuple
torch.utils._pytree.register_pytree_node(
    MixedScaleMaps, lambda maps: ([*maps, maps.layout], len(maps)),
    lambda children, count: MixedScaleMaps(children[:count], children[count]),
    serialized_type_name='mmseg_msvit.models.features.MixedScaleMaps')


def layout_of(outputs) -> MixedScaleLayout:
    """The layout of an MSViT forward's outputs, either form (:class:`MixedScaleMaps` or a
    tuple of :class:`MixedScaleFeatures`)."""
    layout = getattr(outputs, 'layout', None)
    if layout is None and len(outputs) and isinstance(outputs[0], MixedScaleFeatures):
        layout = outputs[0].layout
    if layout is None:
        raise TypeError(f'{type(outputs).__name__} of {[type(o).__name__ for o in outputs]} '
                        'carries no MSViT layout: expected the outputs of an MSViT backbone '
                        '(MixedScaleFeatures, or MixedScaleMaps with out_type=\'featmap\')')
    return layout
