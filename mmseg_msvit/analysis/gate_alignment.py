"""Does the gate spend fine tokens where the detail is? Compare its decisions with the labels.

A coarse region is *detailed* when the ground truth inside it holds two or more classes (an object
boundary crosses it, or a small object sits in it) and *uniform* when it holds one class; regions
that are all ignore label count as neither. A gate that follows detail has a clearly higher fine
fraction on detailed regions than on uniform ones; a gate that ignores the image has the same.
"""
from typing import Dict, Iterable, Tuple

import numpy as np

UNIFORM, DETAILED, IGNORED = 0, 1, 2


def region_detail_kinds(label: np.ndarray, region_size: int, ignore_index: int = 255) -> np.ndarray:
    """Classify the coarse regions of a label map.

    Args:
        label (ndarray): (H, W) integer label map aligned with the image the gate saw; it is
            padded with ``ignore_index`` up to multiples of ``region_size``, as the backbone pads.
        region_size (int): side of a coarse region in pixels (> 0).
        ignore_index (int): label that counts as no class. Default: 255.

    Returns:
        ndarray: (ceil(H/region_size), ceil(W/region_size)) of UNIFORM / DETAILED / IGNORED.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f'region_detail_kinds: label must be (H, W), got shape {label.shape}')
    if region_size < 1:
        raise ValueError(f'region_detail_kinds: region_size must be >= 1, got {region_size}')
    height, width = label.shape
    rows, cols = -(-height // region_size), -(-width // region_size)
    padded = np.full((rows * region_size, cols * region_size), ignore_index, label.dtype)
    padded[:height, :width] = label
    blocks = padded.reshape(rows, region_size, cols, region_size).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows, cols, -1).astype(np.int64)
    valid = blocks != ignore_index
    # two or more classes <=> the smallest and largest non-ignore label differ
    lowest = np.where(valid, blocks, np.iinfo(np.int64).max).min(-1)
    highest = np.where(valid, blocks, np.iinfo(np.int64).min).max(-1)
    kinds = np.full((rows, cols), IGNORED, np.int64)
    labelled = valid.any(-1)
    kinds[labelled & (lowest == highest)] = UNIFORM
    kinds[labelled & (lowest != highest)] = DETAILED
    return kinds


class DetailAlignment:
    """Accumulates fine decisions on detailed and uniform regions over many images."""

    def __init__(self) -> None:
        self.counts = np.zeros((2, 2), np.int64)  # [kind][fine]

    def update(self, fine_mask: np.ndarray, kinds: np.ndarray) -> None:
        fine_mask = np.asarray(fine_mask, bool)
        if fine_mask.shape != kinds.shape:
            raise ValueError(f'DetailAlignment: fine_mask {fine_mask.shape} and region kinds '
                             f'{kinds.shape} must have the same grid')
        for kind in (UNIFORM, DETAILED):
            chosen = fine_mask[kinds == kind]
            self.counts[kind, 1] += int(chosen.sum())
            self.counts[kind, 0] += int(chosen.size - chosen.sum())

    def summary(self) -> Dict[str, float]:
        """``fine_on_detailed`` / ``fine_on_uniform`` (fractions, NaN without such regions),
        ``detailed_regions`` / ``uniform_regions`` (counts) and ``detail_share_of_fine``: the
        share of fine regions that are detailed."""
        totals = self.counts.sum(1)
        fine = self.counts[:, 1]

        def ratio(num, den):
            return float(num / den) if den else float('nan')

        return {
            'fine_on_detailed': ratio(fine[DETAILED], totals[DETAILED]),
            'fine_on_uniform': ratio(fine[UNIFORM], totals[UNIFORM]),
            'detailed_regions': int(totals[DETAILED]),
            'uniform_regions': int(totals[UNIFORM]),
            'detail_share_of_fine': ratio(fine[DETAILED], fine.sum()),
        }


def detail_alignment(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], region_size: int,
                     ignore_index: int = 255) -> Dict[str, float]:
    """:class:`DetailAlignment` summary over ``(fine_mask, label)`` pairs."""
    meter = DetailAlignment()
    for fine_mask, label in pairs:
        meter.update(fine_mask, region_detail_kinds(label, region_size, ignore_index))
    return meter.summary()
