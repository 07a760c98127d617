"""Mixed-scale tokenization: coarse and fine patches of one image, one shared patch embedding,
owned with the positions, the CLS token and the coarse-token extras by one module
(:class:`MixedScaleEmbed`, an MSViT's ``patch_embed``).

Every coarse region (S_c x S_c px) becomes either ONE coarse token or (S_c/S_f)^2 fine tokens
(S_f x S_f px each), never both, never neither. A coarse patch is average-pooled by S_c/S_f
(2x2 for 32/16: exactly a 0.5x bilinear resize with align_corners=False) down to S_f x S_f and
embedded by the SAME patch embedding as the fine patches; its position embedding is the same
average of the fine position embeddings it covers (:func:`coarsen`, the one pooling rule).

Adaptive trimming: only the active tokens of each image are gathered; inactive tokens never
enter the transformer. When the images of a batch need different numbers of tokens (threshold
mode), they are packed into one sequence (:mod:`mmseg_msvit.models.packed`: no padding anywhere,
attention within each image), or, with ``pack=False``, padded to the longest sequence with a
key-padding mask. There is no Python loop over images or tokens.
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from .coarse_embed import CoarseTokenEmbed
from .packed import PackedSequences, pack_lengths
from .policy import ScaleDecision, is_counting_one_forward


def regions_to_rows(img: torch.Tensor, region_size: int) -> torch.Tensor:
    """Cut an image into non-overlapping square regions, one flattened row each.

    Args:
        img (Tensor): (B, C, H, W), H and W multiples of ``region_size``.
        region_size (int): side of a region in pixels.

    Returns:
        Tensor: (B, H/region_size, W/region_size, C*region_size*region_size), each row in
        (C, kh, kw) order, the order a ``Conv2d(kernel=stride=region_size)`` weight flattens to.
    """
    if img.shape[-2] % region_size or img.shape[-1] % region_size:
        raise ValueError(f'regions_to_rows: the sides {tuple(img.shape[-2:])} must be multiples '
                         f'of region_size={region_size}')
    batch, channels, height, width = img.shape
    rows, cols = height // region_size, width // region_size
    # one copy (F.unfold + transpose + contiguous would make two)
    regions = img.reshape(batch, channels, rows, region_size, cols, region_size)
    return regions.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows, cols, -1)


def is_exporting() -> bool:
    """True inside torch.export (and the ONNX dynamo exporter built on it)."""
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and hasattr(compiler, 'is_exporting')
                and compiler.is_exporting())


def coarsen(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """The pooling rule shared by coarse patches and coarse position embeddings.

    Args:
        x (Tensor): (B, C, H, W), H and W multiples of ``ratio``.
        ratio (int): coarse/fine patch size ratio (2 for 32/16).

    Returns:
        Tensor: (B, C, H/ratio, W/ratio), the mean of each ratio x ratio block.
    """
    return F.avg_pool2d(x, ratio) if ratio > 1 else x


class MixedScaleLayout(NamedTuple):
    """Where each token sits on the image grid (shared by every layer of one forward): the
    forward's :class:`~mmseg_msvit.models.policy.ScaleDecision` and where its tokens went.

    Attributes:
        decision (ScaleDecision): what was decided (mask, straight-through value, gate logits,
            token counts, the gate's cost); :attr:`fine_mask`, :attr:`gate_logits`,
            :attr:`num_tokens` and :attr:`gate_macs_per_region` read it.
        cell_to_token (Tensor): (B, Hf*Wf) long; for every fine cell (raster order) the index, in
            the patch-token sequence (CLS excluded), of the token covering it.
        valid (Tensor): (B, L) bool, False on padding.
        fine_grid (tuple): (Hf, Wf) of the padded input.
        out_size (tuple): (H_out, W_out) fine cells covering the unpadded input.
        packed (PackedSequences | None): set when the tokens of the batch are packed into one
            sequence (each image's CLS token at ``packed.starts``, its patch tokens after it in
            ``cell_to_token`` order); None for a (B, 1 + L, D) batch.
    """
    decision: ScaleDecision
    cell_to_token: torch.Tensor
    valid: torch.Tensor
    fine_grid: Tuple[int, int]
    out_size: Tuple[int, int]
    packed: Optional[PackedSequences] = None

    @property
    def fine_mask(self) -> torch.Tensor:
        """(B, Hc, Wc) bool, True = region split into fine tokens."""
        return self.decision.fine_mask

    @property
    def gate_logits(self) -> Optional[torch.Tensor]:
        """(B, Hc, Wc) logits of FINE from the gate of this forward (with gradient in
        training); None when no gate ran (forced scale or decisions given by the caller)."""
        return self.decision.gate_logits

    @property
    def num_tokens(self) -> torch.Tensor:
        """(B,) long, patch tokens per image (CLS excluded)."""
        return self.decision.num_tokens

    @property
    def gate_macs_per_region(self) -> int:
        """MACs per region of the gate that ran (it may be a gate the policy substituted); 0
        when no gate ran."""
        return self.decision.gate_macs_per_region

    @property
    def num_regions(self) -> int:
        """Coarse regions of the (padded) input."""
        return self.fine_mask.shape[1] * self.fine_mask.shape[2]

    @property
    def static_fine_regions(self) -> Optional[int]:
        """Fine regions of EVERY image when shapes fix them (budget mode, forced scale), as a
        Python int; None when they depend on the image."""
        static = self.decision.static_num_tokens
        if static is None:
            return None
        per_fine = (self.fine_grid[0] // self.fine_mask.shape[1])**2
        return (int(static) - self.num_regions) // (per_fine - 1)


class MixedScaleTokens(NamedTuple):
    """Output of :class:`MixedScaleEmbed`.

    Attributes:
        tokens (Tensor): (B, 1 + L, D), CLS first, padded to the longest image; or, when
            ``layout.packed`` is set, (1, N, D): every image's CLS and patch tokens one after
            the other, N = sum of (1 + L_b).
        attn_mask (Tensor | None): (B, 1, 1, 1 + L) bool key mask (True = attend), or None when
            no image in the batch is padded (always None when packed).
        layout (MixedScaleLayout): the index map for reconstruction.
    """
    tokens: torch.Tensor
    attn_mask: Optional[torch.Tensor]
    layout: MixedScaleLayout


class MixedScaleEmbed(nn.Module):
    """The embedding of an MSViT (its ``patch_embed``): everything between the pixels and the
    first transformer block, in one module (as timm's ``NaFlexEmbeds`` holds patches, positions
    and the validity mask).

    It owns the patch projection (``proj``, a ``Conv2d`` with kernel = stride = S_f, applied as
    the equivalent linear map to the gathered patches only), the CLS token (``cls_token``), the
    position table (``pos_embed``, for ``img_size``; resampled to each input, and resized on load
    by a ``load_state_dict`` pre-hook) and, when the backbone asks for them
    (:meth:`add_coarse_extras`), the coarse-token extras (``coarse_embed``,
    :class:`~mmseg_msvit.models.coarse_embed.CoarseTokenEmbed`). Its forward turns a padded
    image and a :class:`~mmseg_msvit.models.policy.ScaleDecision` into the active tokens of
    each image.

    Candidate order: all coarse regions (raster order), then all fine cells (raster order); the
    active ones keep this order. With every region fine the sequence is exactly a ViT/16's.

    How the task loss reaches the gate (the paper's section 3): in training every active token is
    multiplied by its straight-through gate value (``v`` for fine tokens, ``1 - v`` for coarse
    ones; 1 in the forward pass). The gate's gradient is then ``sum <dL/dt, t>`` over the
    region's tokens: how the loss reacts to scaling the tokens that exist, which says little
    about whether the *other* scale would do better (docs/method.md, "The gate's training
    signal"; ``tools/analysis_tools/gate_signal.py`` measures it).

    Args:
        img_size (tuple): (H, W) the position table is for.
        fine_patch_size (int): S_f. Default: 16.
        coarse_patch_size (int): S_c, a multiple of S_f. Default: 32.
        in_channels (int): image channels. Default: 3.
        embed_dims (int): D. Default: 768.
        patch_bias (bool): a bias in the patch projection. Default: True.
        pos_embed_antialias (bool): resample the position table with antialiasing (timm's
            way) or plain bicubic (mmseg's). Default: True.
    """

    #: prefix tokens before the patch tokens (the CLS token)
    num_prefix_tokens = 1

    def __init__(self,
                 img_size: Tuple[int, int],
                 fine_patch_size: int = 16,
                 coarse_patch_size: int = 32,
                 in_channels: int = 3,
                 embed_dims: int = 768,
                 patch_bias: bool = True,
                 pos_embed_antialias: bool = True) -> None:
        super().__init__()
        if fine_patch_size < 1 or coarse_patch_size % fine_patch_size != 0 \
                or coarse_patch_size <= fine_patch_size:
            raise ValueError('MixedScaleEmbed: coarse_patch_size must be a multiple (> 1x) of '
                             f'fine_patch_size, got coarse_patch_size={coarse_patch_size}, '
                             f'fine_patch_size={fine_patch_size}')
        self.fine_patch_size = fine_patch_size
        self.coarse_patch_size = coarse_patch_size
        self.ratio = coarse_patch_size // fine_patch_size
        self.in_channels = in_channels
        self.embed_dims = embed_dims
        self.pos_embed_antialias = pos_embed_antialias
        self.pos_grid_size = (img_size[0] // fine_patch_size, img_size[1] // fine_patch_size)
        # built as timm's PatchEmbed builds it (a bias, then none for patch_bias=False): a seed
        # gives timm's initial weights
        self.proj = nn.Conv2d(in_channels, embed_dims, fine_patch_size, fine_patch_size)
        if not patch_bias:
            self.proj.bias = None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(
            1, self.num_prefix_tokens + self.pos_grid_size[0] * self.pos_grid_size[1],
            embed_dims))
        self.coarse_embed: Optional[CoarseTokenEmbed] = None
        self._region_of_cell_cache = {}
        self._register_load_state_dict_pre_hook(self._resize_pos_embed)

    def add_coarse_extras(self, detail: bool, scale_embed: bool) -> None:
        """Give coarse tokens their extras (:class:`~mmseg_msvit.models.coarse_embed.
        CoarseTokenEmbed`): a residual from the region's fine patch embeddings and/or a learned
        scale vector. MSViT calls it after building its other parts, so a seed gives those parts
        the same weights with or without the extras."""
        self.coarse_embed = CoarseTokenEmbed(self.embed_dims, self.ratio,
                                             self.in_channels * self.fine_patch_size**2,
                                             detail=detail, scale_embed=scale_embed)

    def reset_parameters(self) -> None:
        """timm's ViT initialisation of the position table and CLS token. The projection keeps
        ``Conv2d``'s own initialisation, as in timm; MSViT resets the coarse-token extras last
        (their own ``reset_parameters``: zero output layer), after its other parts."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    # ------------------------------------------------------------------ positions
    def _resize_pos_embed(self, state_dict, prefix, *args, **kwargs) -> None:
        """``load_state_dict`` pre-hook: a position table of another square grid (a timm
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
                                                 num_prefix_tokens=self.num_prefix_tokens,
                                                 antialias=self.pos_embed_antialias)

    def positions(self, cells: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Position embeddings for an input of ``cells`` fine cells (bicubic, antialiased as
        timm's unless ``pos_embed_antialias=False``, mmseg's).

        Returns:
            tuple: cls_pos (1, 1, D) and the fine grid (1, D, Hf, Wf).
        """
        pos = resample_abs_pos_embed(self.pos_embed, new_size=cells,
                                     old_size=self.pos_grid_size,
                                     num_prefix_tokens=self.num_prefix_tokens,
                                     antialias=self.pos_embed_antialias)
        cls_pos = pos[:, :self.num_prefix_tokens]
        grid = pos[:, self.num_prefix_tokens:].transpose(1, 2).reshape(
            1, self.embed_dims, *cells)
        return cls_pos, grid

    # ------------------------------------------------------------------ tokens
    def _region_of_cell_index(self, fine_grid: Tuple[int, int], device) -> torch.Tensor:
        """(Hf*Wf,) index of the coarse region that owns each fine cell."""
        rows, cols = fine_grid
        ys = torch.arange(rows, device=device) // self.ratio
        xs = torch.arange(cols, device=device) // self.ratio
        return (ys[:, None] * (cols // self.ratio) + xs[None, :]).flatten()

    def _region_of_cell(self, fine_grid: Tuple[int, int], device) -> torch.Tensor:
        """:meth:`_region_of_cell_index`, cached per grid and device in eager mode (never while
        tracing or compiling, so no traced value is kept)."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self._region_of_cell_index(fine_grid, device)
        key = (fine_grid, str(device))
        if key not in self._region_of_cell_cache:
            self._region_of_cell_cache[key] = self._region_of_cell_index(fine_grid, device)
        return self._region_of_cell_cache[key]

    def forward(self,
                img: torch.Tensor,
                decision: ScaleDecision,
                out_size: Optional[Tuple[int, int]] = None,
                pack: bool = True,
                cls_key: bool = True) -> MixedScaleTokens:
        """Tokenize a batch: CLS, positions and the coarse-token extras included.

        Args:
            img (Tensor): (B, C, H, W), H and W multiples of S_c.
            decision (ScaleDecision): the decisions
                (:class:`~mmseg_msvit.models.policy.ScaleDecision`: mask, straight-through value,
                gate logits, token counts; ``ScaleDecision.from_mask`` for a bare mask).
            out_size (tuple, optional): (H_out, W_out) fine cells of the unpadded input. The
                position table spans the cells that cover the image (as mmseg's ViT, which pads
                to the fine patch only); the cells of the padding to the coarse size repeat the
                edge.
            pack (bool): when the images need different numbers of tokens, pack them into one
                sequence (True, default) instead of padding to the longest (False); only inputs
                of whole regions whose tokens attend to CLS are packed.
            cls_key (bool): whether tokens attend to the CLS token (False: mmseg's
                ``with_cls_token=False``; padded batch only).

        The key mask: no token attends to padding, nor to the tokens whose every cell lies in
        the padding to the coarse size (beyond ``out_size``: they run, unattended, so the image's
        tokens see what mmseg's ViT, padded to the fine patch only, sees); None when nothing is
        masked.

        The decision's ``fine_value``, when it requires grad, multiplies fine tokens (and
        ``1 - fine_value`` coarse ones) so the task loss reaches the gate. Its
        ``static_num_tokens`` (budget mode, forced scale): no padding, no host read, static
        shapes for torch.export / ONNX. Otherwise ONE host read, the token count of every image
        (``num_tokens.tolist()``): the shapes of the packed or padded batch depend on it.

        Returns:
            MixedScaleTokens
        """
        if not isinstance(decision, ScaleDecision):
            raise TypeError('MixedScaleEmbed: decision must be a ScaleDecision (MSViT.'
                            'decide_scales, or ScaleDecision.from_mask(mask, tokens_per_fine) '
                            f'for given decisions), got {type(decision).__name__}')
        if decision.static_num_tokens is None and (torch.jit.is_tracing() or is_exporting()) \
                and not is_counting_one_forward():  # the one check, for every caller
            raise RuntimeError(
                'MSViT: in threshold mode (or with given decisions) the token count depends on '
                'the image, so torch.jit.trace / torch.export would freeze one image\'s count and '
                'give wrong results on others. Use budget mode for static shapes: set '
                'model.backbone.fine_budget (e.g. 0.5), or force_scale.')
        fine_mask, fine_value = decision.fine_mask, decision.fine_value
        batch = img.shape[0]
        fine_rows, fine_cols = img.shape[-2] // self.fine_patch_size, \
            img.shape[-1] // self.fine_patch_size
        out_size = tuple(out_size or (fine_rows, fine_cols))
        cls_pos, pos_grid = self.positions(out_size)
        if out_size != (fine_rows, fine_cols):
            pos_grid = F.pad(pos_grid, (0, fine_cols - out_size[1], 0, fine_rows - out_size[0]),
                             mode='replicate')
        cls = self.cls_token + cls_pos
        num_coarse = fine_mask.shape[1] * fine_mask.shape[2]
        region_of_cell = self._region_of_cell((fine_rows, fine_cols), img.device)

        # Candidates: every coarse and every fine patch as a flat pixel row (no compute yet).
        coarse_rows = regions_to_rows(coarsen(img, self.ratio), self.fine_patch_size)
        fine_rows_px = regions_to_rows(img, self.fine_patch_size)
        candidates = torch.cat([coarse_rows.flatten(1, 2), fine_rows_px.flatten(1, 2)], dim=1)

        coarse_active = ~fine_mask.flatten(1)  # (B, Nc)
        fine_active = fine_mask.flatten(1)[:, region_of_cell]  # (B, Nf)
        active = torch.cat([coarse_active, fine_active], dim=1)  # (B, M)
        counts = decision.num_tokens
        lengths = None
        if decision.static_num_tokens is not None:
            length = int(decision.static_num_tokens)  # every image has this many tokens
        else:
            lengths = counts.tolist()  # the one host read of threshold mode
            length = max(lengths)

        # Active candidates first, in candidate order (stable sort), then truncate to the longest.
        # keys are unique (inactive after active, each in candidate order), so a plain sort is
        # the stable one: ONNX has no stable sort
        candidate = torch.arange(active.shape[1], device=img.device)
        order = torch.argsort((~active).long() * active.shape[1] + candidate, dim=1)
        token_index = order[:, :length]  # (B, L) candidate index of each token
        valid = torch.arange(length, device=img.device)[None, :] < counts[:, None]
        pos_candidates = torch.cat(
            [coarsen(pos_grid, self.ratio).flatten(2),
             pos_grid.flatten(2)], dim=2)[0].transpose(0, 1)  # (M, D)
        value = None
        if fine_value is not None and fine_value.requires_grad:
            flat_value = fine_value.flatten(1)
            value = torch.cat([1 - flat_value, flat_value[:, region_of_cell]], dim=1)
        extra = None
        if self.coarse_embed is not None:
            # a sequence holds its active coarse candidates first: image b's first n_coarse[b]
            # tokens are coarse; every image's count follows from its length (no host read)
            per_fine = self.ratio**2
            longest_coarse = num_coarse - min((n - num_coarse) // (per_fine - 1) for n in (
                lengths if lengths is not None else (length, )))
            extra = self._coarse_extra(fine_rows_px, order, coarse_active.sum(1),
                                       longest_coarse)

        # a packed batch takes no key mask: only inputs of whole regions attending to CLS
        pack = pack and cls_key and out_size == (fine_rows, fine_cols)
        if lengths is not None and pack and min(lengths) < length:
            tokens, packed = self._packed_tokens(candidates, order, counts, lengths,
                                                 pos_candidates, cls, value, extra)
            attn_mask = None
        else:
            padded = lengths is not None and min(lengths) < length
            tokens = self._padded_tokens(candidates, token_index, valid if padded else None,
                                         pos_candidates, cls, value, extra)
            packed = None
            keys = valid if padded else None
            if out_size != (fine_rows, fine_cols):  # tokens of cells beyond the image
                rows_in = torch.arange(fine_rows, device=img.device) < out_size[0]
                cols_in = torch.arange(fine_cols, device=img.device) < out_size[1]
                cell_in = rows_in[:, None] & cols_in[None, :]
                # a coarse token covers cells inside iff its region's top-left cell is inside
                # (the padding is at the bottom and right)
                inside = torch.cat([cell_in[::self.ratio, ::self.ratio].flatten(),
                                    cell_in.flatten()])[token_index]  # (B, L)
                keys = inside if keys is None else keys & inside
            attn_mask = None
            if keys is not None or not cls_key:
                keys = valid.new_ones(valid.shape) if keys is None else keys
                attn_mask = torch.cat([keys.new_full((batch, 1), cls_key), keys],
                                      dim=1)[:, None, None, :]

        # Reconstruction index: sequence position of every candidate, then of every fine cell.
        position = torch.empty_like(order)
        position.scatter_(1, order, torch.arange(order.shape[1], device=img.device).expand(
            batch, -1))
        cell_to_token = torch.where(fine_active, position[:, num_coarse:],
                                    position[:, region_of_cell])
        layout = MixedScaleLayout(decision=decision, cell_to_token=cell_to_token, valid=valid,
                                  fine_grid=(fine_rows, fine_cols), out_size=out_size,
                                  packed=packed)
        return MixedScaleTokens(tokens, attn_mask, layout)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patch projection as the equivalent linear map on flat pixel rows."""
        return F.linear(pixels, self.proj.weight.flatten(1), self.proj.bias)

    def _coarse_extra(self, fine_rows_px, order, num_coarse, longest):
        """(B, longest, D): the coarse-token extras of the active coarse tokens in sequence
        order (image b's first ``num_coarse[b]`` tokens), zero beyond each image's count."""
        batch, rows, cols, pixels = fine_rows_px.shape
        cells = self.ratio**2
        is_coarse = torch.arange(longest, device=order.device)[None, :] < num_coarse[:, None]
        if self.coarse_embed.detail:
            # the fine pixel rows of every region, raster order within the region
            per_region = fine_rows_px.reshape(batch, rows // self.ratio, self.ratio,
                                              cols // self.ratio, self.ratio, pixels)
            per_region = per_region.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, cells, pixels)
            region = torch.where(is_coarse, order[:, :longest], 0)  # coarse candidate = region
            fine = self._embed(torch.gather(
                per_region, 1, region[..., None, None].expand(-1, -1, cells, pixels))
                               )  # (B, longest, cells, D)
        else:
            fine = fine_rows_px.new_zeros(batch, longest, 0, self.embed_dims)
        return self.coarse_embed(fine) * is_coarse[..., None]

    def _padded_tokens(self, candidates, token_index, valid, pos_candidates, cls, value,
                       extra=None):
        """(B, 1 + L, D) tokens, padded to the longest image (``valid``: which are tokens, when
        some images are shorter; their padding is zeroed)."""
        batch = candidates.shape[0]
        pixels = torch.gather(candidates, 1,
                              token_index[..., None].expand(-1, -1, candidates.shape[-1]))
        tokens = self._embed(pixels) + pos_candidates[token_index]  # (B, L, D)
        if extra is not None and extra.shape[1]:
            tokens = torch.cat([tokens[:, :extra.shape[1]] + extra,
                                tokens[:, extra.shape[1]:]], dim=1)
        if value is not None:
            tokens = tokens * torch.gather(value, 1, token_index)[..., None]  # 1 forward
        if valid is not None:  # padded images
            tokens = tokens * valid[..., None]
        return torch.cat([cls.expand(batch, -1, -1), tokens], dim=1)

    def _packed_tokens(self, candidates, order, counts, lengths, pos_candidates, cls, value,
                       extra=None):
        """(1, N, D) tokens of all images one after the other (each its CLS first, then its
        active candidates in candidate order) and their :class:`PackedSequences`."""
        batch, device = candidates.shape[0], candidates.device
        total = sum(lengths)
        packed = pack_lengths(tuple(n + 1 for n in lengths), device)
        # image and rank (position among its image's active candidates) of each patch token
        image = torch.repeat_interleave(torch.arange(batch, device=device), counts,
                                        output_size=total)
        first = counts.cumsum(0) - counts
        rank = torch.arange(total, device=device) - first[image]
        candidate = order[image, rank]  # (T,) candidate index of each patch token
        tokens = self._embed(candidates[image, candidate]) + \
            pos_candidates[candidate]  # (T, D)
        if extra is not None and extra.shape[1]:
            # image b's first tokens are its coarse ones; extra is zero beyond its count
            inside = rank < extra.shape[1]
            tokens = tokens + extra[image, rank.clamp(max=extra.shape[1] - 1)] * inside[:, None]
        if value is not None:
            tokens = tokens * value[image, candidate][:, None]  # 1 in the forward pass
        # put CLS tokens and patch tokens at their packed positions (a gather keeps autograd)
        source = torch.empty(total + batch, dtype=torch.long, device=device)
        source[packed.starts] = torch.arange(batch, device=device)
        source[packed.starts[image] + 1 + rank] = batch + torch.arange(total, device=device)
        tokens = torch.cat([cls[0].expand(batch, -1), tokens], dim=0)[source]
        return tokens[None], packed
