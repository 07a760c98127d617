"""mmseg_msvit.compat: mmcv-lite stand-in ops and weights_only checkpoints."""
import importlib.util
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmseg_msvit import compat


def test_stack_imports_on_mmcv_lite():
    import mmpretrain.models  # noqa: F401
    import mmseg.models  # noqa: F401
    import mmcv.ops
    assert compat.mmcv_has_compiled_ops() is False
    assert getattr(mmcv.ops, '__mmseg_msvit_standin__', False)
    from mmcv.ops import point_sample, sigmoid_focal_loss  # noqa: F401


def _mmcv_point_sample_reference():
    """mmcv's own point_sample.py is pure PyTorch: load that file directly as the reference."""
    import mmcv
    path = osp.join(osp.dirname(mmcv.__file__), 'ops', 'point_sample.py')
    spec = importlib.util.spec_from_file_location('_mmcv_point_sample_ref', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.point_sample


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('points_shape', [(2, 7, 2), (2, 3, 5, 2)])
def test_point_sample_equals_mmcv(align_corners, points_shape):
    reference = _mmcv_point_sample_reference()
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 4, 9, 11, generator=gen)
    points = torch.rand(*points_shape, generator=gen)
    ours = compat.point_sample(feats, points, align_corners=align_corners)
    theirs = reference(feats, points, align_corners=align_corners)
    assert ours.shape == theirs.shape == (2, 4, *points_shape[1:-1])
    torch.testing.assert_close(ours, theirs)


def _kernel_backward(logits, target, gamma, alpha):
    """Closed-form gradient from mmcv's sigmoid_focal_loss backward kernel."""
    p = logits.sigmoid()
    is_target = F.one_hot(target, logits.size(1) + 1)[:, :logits.size(1)].bool()
    tiny = torch.finfo(p.dtype).tiny
    term_p = (1 - p).pow(gamma) * (1 - p - gamma * p * p.clamp(min=tiny).log())
    term_n = p.pow(gamma) * (gamma * (1 - p) * (1 - p).clamp(min=tiny).log() - p)
    return torch.where(is_target, -alpha * term_p, -(1 - alpha) * term_n)


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_sigmoid_focal_loss_matches_mmcv_definition(reduction):
    from mmseg.models.losses.focal_loss import py_sigmoid_focal_loss
    gen = torch.Generator().manual_seed(1)
    num, num_classes, gamma, alpha = 12, 5, 2.0, 0.25
    logits = torch.randn(num, num_classes, generator=gen, dtype=torch.float64,
                         requires_grad=True)
    target = torch.randint(0, num_classes + 1, (num, ), generator=gen)  # C = background
    ours = compat.sigmoid_focal_loss(logits, target, gamma, alpha, None, reduction)
    one_hot = F.one_hot(target, num_classes + 1)[:, :num_classes]
    reference = py_sigmoid_focal_loss(logits, one_hot, gamma=gamma, alpha=alpha,
                                      reduction='none')
    expected = {'none': reference, 'sum': reference.sum(),
                'mean': reference.sum() / num}[reduction]
    torch.testing.assert_close(ours, expected)
    # gradient of the summed loss equals mmcv's backward kernel
    (grad, ) = torch.autograd.grad(
        compat.sigmoid_focal_loss(logits, target, gamma, alpha, None, 'sum'), logits)
    torch.testing.assert_close(grad, _kernel_backward(logits.detach(), target, gamma, alpha))


def test_sigmoid_focal_loss_class_weight_and_bad_input():
    logits = torch.randn(4, 3)
    target = torch.tensor([0, 1, 2, 1])
    weight = torch.tensor([1.0, 2.0, 3.0])
    plain = compat.sigmoid_focal_loss(logits, target, reduction='none')
    weighted = compat.sigmoid_focal_loss(logits, target, weight=weight, reduction='none')
    torch.testing.assert_close(weighted, plain * weight[target][:, None])
    with pytest.raises(ValueError, match='reduction'):
        compat.sigmoid_focal_loss(logits, target, reduction='avg')
    with pytest.raises(TypeError, match='int64'):
        compat.sigmoid_focal_loss(logits, target.float())
    with pytest.raises(ValueError, match=r'target \(N,\)'):
        compat.sigmoid_focal_loss(logits, target[:2])


def test_mmseg_focal_loss_wrapper_uses_the_standin():
    """mmseg's CUDA-path focal loss calls mmcv.ops.sigmoid_focal_loss: it is ours here."""
    from mmseg.models.losses import focal_loss
    assert focal_loss._sigmoid_focal_loss is compat.sigmoid_focal_loss
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(10, 4, generator=gen, requires_grad=True)
    target = torch.randint(0, 4, (10, ), generator=gen)
    one_hot = F.one_hot(target, 4)
    valid = torch.ones(10, 1, dtype=torch.bool)
    value = focal_loss.sigmoid_focal_loss(pred, target, one_hot, valid_mask=valid, alpha=0.5)
    reference = focal_loss.py_sigmoid_focal_loss(pred, one_hot, valid_mask=valid, alpha=0.5)
    torch.testing.assert_close(value, reference)
    value.backward()
    assert pred.grad.abs().sum() > 0


def test_missing_ops_fail_on_use_with_a_clear_message():
    from mmcv.ops import CrissCrossAttention, DeformConv2d  # import works
    with pytest.raises(compat.MissingMmcvOpError, match='CrissCrossAttention.*full mmcv'):
        CrissCrossAttention(16)
    with pytest.raises(compat.MissingMmcvOpError, match='DeformConv2d'):
        DeformConv2d(3, 3, 3)
    with pytest.raises(ImportError):
        from mmcv.ops import nms  # noqa: F401  (not a name mmseg imports: plain ImportError)


def test_install_is_idempotent():
    import mmcv.ops
    before = mmcv.ops
    compat.install()
    compat.mmcv_ops.install_mmcv_ops_standin()
    import sys
    assert sys.modules['mmcv.ops'] is before


# --------------------------------------------------------------------------------------------
# Runner checkpoints under weights_only=True


def _toy_runner(work_dir, max_iters, resume=False, load_from=None, hooks=None):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, inputs, targets=None, mode='tensor'):
            out = self.linear(inputs)
            if mode == 'loss':
                return dict(loss=((out - targets)**2).mean())
            return out

    class Data(torch.utils.data.Dataset):

        def __len__(self):
            return 8

        def __getitem__(self, index):
            gen = torch.Generator().manual_seed(index)
            return dict(inputs=torch.randn(4, generator=gen), targets=torch.randn(1, generator=gen))

    return Runner(
        model=Toy(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=Data(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=2,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=hooks,
        resume=resume,
        load_from=load_from,
        randomness=dict(seed=0),
        experiment_name=f'toy_{max_iters}_{resume}')


def test_runner_checkpoint_saves_resumes_and_loads_weights_only(tmp_path):
    from mmengine.hooks import Hook
    from mmengine.runner import load_checkpoint

    first = _toy_runner(tmp_path, max_iters=2)
    first.train()
    ckpt_path = tmp_path / 'iter_2.pth'
    assert ckpt_path.exists()
    # the file holds non-tensor objects, yet loads with weights_only=True (torch's default)
    saved = torch.load(ckpt_path, weights_only=True)
    assert saved['meta']['iter'] == 2
    assert 'train/loss' in saved['message_hub']['log_scalars']
    saved_momentum = saved['optimizer']['state'][0]['momentum_buffer']

    seen = {}

    class Probe(Hook):

        def before_train(self, runner):
            seen['iter'] = runner.iter
            state = runner.optim_wrapper.optimizer.state_dict()['state'][0]
            seen['momentum'] = state['momentum_buffer'].clone()
            seen['weight'] = runner.model.linear.weight.detach().clone()

    resumed = _toy_runner(tmp_path, max_iters=4, resume=True, load_from=str(ckpt_path),
                          hooks=[Probe()])
    resumed.train()
    assert seen['iter'] == 2
    torch.testing.assert_close(seen['momentum'], saved_momentum)
    torch.testing.assert_close(seen['weight'], saved['state_dict']['linear.weight'])
    assert resumed.iter == 4

    fresh = _toy_runner(tmp_path / 'fresh', max_iters=1).model
    load_checkpoint(fresh, str(ckpt_path), map_location='cpu')
    torch.testing.assert_close(fresh.linear.weight, saved['state_dict']['linear.weight'])


class _Exploit:
    """A pickle that calls os.system when loaded."""

    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null', ))


class _GetattrExploit:
    """A pickle walking getattr from an allowed function towards its module globals (os, ...)."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer.min, '__globals__'))


@pytest.mark.parametrize('payload', [_Exploit(), _GetattrExploit()])
def test_malicious_checkpoints_are_still_refused(tmp_path, payload):
    from mmengine.runner import CheckpointLoader
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': payload}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    from mmseg_msvit.models.checkpoints import CheckpointError
    with pytest.raises(CheckpointError, match='was refused'):  # one sentence, not a traceback
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ


class _CallsNdarray:
    """A pickle calling numpy.ndarray(shape, dtype): an uninitialised array of any dtype."""

    def __reduce__(self):
        import numpy as np
        return (np.ndarray, ((4, ), np.dtype('float64')))


def test_crafted_numpy_and_history_states_are_refused(tmp_path):
    """Only what mmengine checkpoints hold: plain numeric arrays and scalars, HistoryBuffers with
    mmengine's own statistics, restored without touching class state."""
    import numpy as np
    from mmengine.logging import HistoryBuffer

    from mmseg_msvit.models.checkpoints import CheckpointError, read_checkpoint
    fine = {'array': np.arange(6, dtype=np.float32).reshape(2, 3), 'scalar': np.float64(1.5),
            'ints': np.array([1, 2], dtype=np.uint8), 'buffer': HistoryBuffer([1.0, 2.0], [1, 1])}
    torch.save(fine, tmp_path / 'fine.pth')
    loaded = read_checkpoint(str(tmp_path / 'fine.pth'))
    np.testing.assert_array_equal(loaded['array'], fine['array'])
    assert loaded['scalar'] == 1.5 and loaded['ints'].dtype == np.uint8
    assert type(loaded['buffer']) is HistoryBuffer and loaded['buffer'].mean() == 1.5
    torch.save(loaded, tmp_path / 'again.pth')  # what was loaded saves as plain numpy again
    assert read_checkpoint(str(tmp_path / 'again.pth'))['array'].sum() == 15

    structured = np.zeros(2, dtype=[('x', 'i8'), ('y', 'O')])
    torch.save({'a': structured}, tmp_path / 'object_field.pth')
    with pytest.raises(CheckpointError, match=r'refused.*numpy.dtype'):
        read_checkpoint(str(tmp_path / 'object_field.pth'))
    torch.save({'a': _CallsNdarray()}, tmp_path / 'ndarray_call.pth')
    with pytest.raises(CheckpointError, match=r'refused.*numpy.ndarray\(...\)'):
        read_checkpoint(str(tmp_path / 'ndarray_call.pth'))

    table = HistoryBuffer._statistics_methods
    before = dict(table)
    swapped = HistoryBuffer([1.0], [1])
    try:  # a buffer whose 'min' statistic is mmengine's max
        table['min'] = HistoryBuffer.max
        torch.save({'buffer': swapped}, tmp_path / 'swapped.pth')
    finally:
        table.clear()
        table.update(before)
    with pytest.raises(CheckpointError, match=r"refused.*statistics \['current', 'max', 'mean'"):
        read_checkpoint(str(tmp_path / 'swapped.pth'))
    assert HistoryBuffer._statistics_methods == before  # no class state changed


DTYPE_REBUILT_AFTER_USE = r"""
import pickle, sys, zipfile
import numpy as np
import mmseg_msvit
from mmengine.runner.checkpoint import CheckpointLoader
from mmseg_msvit.models.checkpoints import CheckpointError, read_checkpoint


def text(value):
    return b'X' + len(value).to_bytes(4, 'little') + value.encode()


raw = pickle.dumps({'a': np.full(1, 1.5)}, protocol=2)
dtype_memo = raw[raw.index(b'cnumpy\ndtype\n'):].split(b'R', 1)[1][:2]
assert dtype_memo[:1] == b'q'  # BINPUT n after the dtype's REDUCE
# after the array was restored with the dtype, BUILD the same dtype again: a structured dtype
# whose field is itself, flags of an object dtype
again = (b'h' + dtype_memo[1:] + b'(K\x03' + text('|') + b'N(' + text('x') + b't}' + text('x') +
         b'h' + dtype_memo[1:] + b'K\x00\x86sK\x08K\x01K\x3ftb0')
with zipfile.ZipFile(sys.argv[1], 'w') as archive:
    archive.writestr('archive/data.pkl', raw[:-2] + again + b's.')
    archive.writestr('archive/version', '3\n')
    archive.writestr('archive/byteorder', 'little')
for load in (read_checkpoint, CheckpointLoader.load_checkpoint):
    try:
        loaded = load(sys.argv[1])
    except CheckpointError as err:
        print('refused:', err)
        continue
    print('loaded:', loaded['a'].dtype.fields is not None)
"""


def test_a_dtype_rebuilt_after_its_array_was_checked_is_refused(tmp_path):
    """A pickle may BUILD a memoised numpy dtype a second time, after an array using it passed
    the check: numpy's own dtype state would then turn the array structured (or give it object
    fields: pointers read from the file's bytes). Run apart, since the old behaviour could
    crash the interpreter."""
    script = tmp_path / 'attack.py'
    script.write_text(DTYPE_REBUILT_AFTER_USE)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / 'evil.pth')],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(('refused', 'loaded'))]
    assert len(lines) == 2 and all(line.startswith('refused') for line in lines), lines
    assert 'dtype state' in lines[0] and 'plain float64' in lines[0]


def _pickled_call(module: str, name: str, args: bytes) -> bytes:
    """Protocol-2 pickle bytes of ``{'a': module.name(*args)}``, ``args`` already pickled
    (a MARK ... TUPLE of opcodes)."""
    return (b'\x80\x02}q\x00X\x01\x00\x00\x00aq\x01c' + module.encode() + b'\n' + name.encode() +
            b'\n(' + args + b'tR' + b's.')


def test_allow_listed_stand_ins_cannot_be_called_to_reach_memory(tmp_path):
    """A crafted pickle naming the array stand-in (allow-listed so that BUILD may restore it) or
    asking _reconstruct for an object dtype or another shape is refused: either would put bytes
    of the file where numpy expects pointers, or hand out uninitialised memory."""
    import zipfile

    from mmseg_msvit.models.checkpoints import CheckpointError, read_checkpoint

    def torch_file(pickled: bytes, path):
        # torch's zip layout: archive/data.pkl (+ a version record)
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('archive/data.pkl', pickled)
            archive.writestr('archive/version', '3\n')
            archive.writestr('archive/byteorder', 'little')
        return str(path)

    def pickled_str(text: str) -> bytes:
        return b'X' + len(text.encode()).to_bytes(4, 'little') + text.encode()

    def pickled_bytes(data: bytes) -> bytes:  # as torch.save writes bytes: _codecs.encode
        return (b'c_codecs\nencode\n' + pickled_str(data.decode('latin1')) +
                pickled_str('latin1') + b'\x86R')

    cases = [  # an object array whose one pointer is 8 bytes of the file
        _pickled_call('mmseg_msvit.compat.checkpoint_globals', '_CheckedArray',
                      b'K\x01\x85' + pickled_str('O') + pickled_bytes(b'\x00' * 8)),
        # uninitialised memory: 4 float64 values from _reconstruct itself
        _pickled_call('numpy._core.multiarray', '_reconstruct',
                      b'cnumpy\nndarray\n' + b'K\x04\x85' + pickled_bytes(b'd')),
    ]
    for index, pickled in enumerate(cases):
        path = torch_file(pickled, tmp_path / f'crafted{index}.pth')
        with pytest.raises(CheckpointError, match='refused'):
            read_checkpoint(path)
    # the layout itself is what torch reads: a harmless payload in it loads
    harmless = torch_file(b'\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x07s.', tmp_path / 'ok.pth')
    assert read_checkpoint(harmless) == {'a': 7}
