"""Where the gate puts fine tokens, measured against the labels (analysis/gate_alignment.py)."""
import math

import numpy as np
import pytest

from mmseg_msvit.analysis.gate_alignment import (DETAILED, IGNORED, UNIFORM, DetailAlignment,
                                                 detail_alignment, region_detail_kinds)


def test_region_kinds_from_labels():
    label = np.zeros((64, 96), np.uint8)  # 2 x 3 regions of 32 px
    label[0:32, 32:64][5, 7] = 3  # one pixel of another class: detailed
    label[32:64, 64:96] = 255  # all ignore
    label[32:64, 0:32][:, :16] = 255  # ignore plus one class: uniform
    kinds = region_detail_kinds(label, 32)
    assert kinds.tolist() == [[UNIFORM, DETAILED, UNIFORM], [UNIFORM, UNIFORM, IGNORED]]


def test_region_kinds_pad_partial_regions_with_ignore():
    label = np.zeros((40, 40), np.uint8)
    label[35, 35] = 1  # in the partial bottom-right region, beside class 0
    kinds = region_detail_kinds(label, 32)
    assert kinds.shape == (2, 2)
    assert kinds[1, 1] == DETAILED and kinds[0, 1] == UNIFORM


def test_alignment_separates_a_detail_gate_from_a_blind_one():
    rng = np.random.default_rng(0)
    pairs_detail, pairs_blind = [], []
    for _ in range(5):
        label = np.zeros((128, 128), np.int64)
        y, x = rng.integers(0, 120, size=2)
        label[y:y + 8, x:x + 8] = 1
        kinds = region_detail_kinds(label, 32)
        pairs_detail.append((kinds == DETAILED, label))
        pairs_blind.append((rng.random((4, 4)) < 0.5, label))
    good = detail_alignment(pairs_detail, 32)
    assert good['fine_on_detailed'] == 1.0 and good['fine_on_uniform'] == 0.0
    assert good['detail_share_of_fine'] == 1.0
    assert good['detailed_regions'] + good['uniform_regions'] == 5 * 16
    blind = detail_alignment(pairs_blind, 32)
    assert blind['fine_on_uniform'] > 0.2


def test_alignment_rejects_mismatched_grids_and_reports_nan_when_empty():
    meter = DetailAlignment()
    with pytest.raises(ValueError, match='same grid'):
        meter.update(np.ones((2, 2), bool), np.zeros((3, 3), np.int64))
    assert math.isnan(meter.summary()['fine_on_detailed'])
    with pytest.raises(ValueError, match='region_size'):
        region_detail_kinds(np.zeros((4, 4)), 0)
