"""Weight files are read as data, described, and refused when they do not fit."""
import os

import pytest
import torch

from mmseg_msvit.models.checkpoints import (CheckpointError, check_covers, describe_checkpoint,
                                            read_checkpoint)


class _Exploit:

    def __reduce__(self):
        return (os.system, ('true', ))


def test_read_checkpoint_errors_say_what_the_file_is_not(tmp_path):
    (tmp_path / 'random.pth').write_bytes(bytes(range(256)) * 4)  # fixed: not a pickle
    (tmp_path / 'empty.pth').write_bytes(b'')
    torch.save({'meta': _Exploit()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError, match='is not a PyTorch checkpoint') as info:
        read_checkpoint(str(tmp_path / 'random.pth'))
    assert 'weights_only=False' not in str(info.value)
    with pytest.raises(CheckpointError, match=r'empty file \(0 bytes\)'):
        read_checkpoint(str(tmp_path / 'empty.pth'))
    with pytest.raises(CheckpointError, match='refused.*system.*not loaded'):
        read_checkpoint(str(tmp_path / 'evil.pth'))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        read_checkpoint(str(tmp_path / 'missing.pth'))
    with pytest.raises(IsADirectoryError, match='is a directory'):
        read_checkpoint(str(tmp_path))


def test_describe_checkpoint_kinds():
    gate = {'state_dict': {'mlp.0.weight': torch.zeros(1)}, 'meta': {'coarse_patch_size': 32}}
    assert describe_checkpoint(gate).startswith('a gate file')
    seg = {'state_dict': {'backbone.gate.mlp.0.weight': 0, 'decode_head.conv_seg.weight': 0}}
    assert describe_checkpoint(seg) == 'a segmentation model'
    cls = {'state_dict': {'backbone.cls_token': 0, 'head.layers.head.weight': 0}}
    assert describe_checkpoint(cls) == 'a classification model'
    assert describe_checkpoint({'patch_embed.proj.weight': 0}).startswith('a backbone only')
    assert describe_checkpoint({'module.backbone.blocks.0.x': 0}).startswith('a backbone')


def test_check_covers_names_missing_weights_and_allows_training_only_ones():
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(2, 2)
    model.decode_head = torch.nn.Linear(2, 2)
    model.auxiliary_head = torch.nn.Linear(2, 2)
    model.gate_loss = torch.nn.Linear(2, 1)
    full = {'state_dict': {k: v for k, v in model.state_dict().items()}}
    check_covers(model, full, 'full.pth')
    # the auxiliary head and the GBaS prior are training-only
    lean = {'state_dict': {k: v for k, v in model.state_dict().items()
                           if k.startswith(('backbone.', 'decode_head.'))}}
    check_covers(model, lean, 'lean.pth')
    backbone_only = {'state_dict': {k: v for k, v in model.state_dict().items()
                                    if k.startswith('backbone.')}}
    with pytest.raises(CheckpointError, match=r"does not cover this model.*2 weights are "
                       r"missing \(decode_head\.weight, decode_head\.bias"):
        check_covers(model, backbone_only, 'b.pth')
