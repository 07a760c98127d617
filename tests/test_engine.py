"""Reliability of training runs: atomic checkpoint files, no checkpoint lost to a kill during a
save, exact resume, checkpoints that are never code, a stop at the first non-finite loss."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from _helpers import load_tool
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'configs', 'msvit', 'demo_msvit_synthetic.py')


@HOOKS.register_module(force=True)
class LossRecorderHook(Hook):
    """Appends ``{iteration: loss}`` to a JSON-lines file after every training iteration."""

    def __init__(self, path):
        self.path = path

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        with open(self.path, 'a') as f:
            f.write(json.dumps({'iter': runner.iter + 1,
                                'loss': float(outputs['loss'])}) + '\n')


def read_losses(path):
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return {row['iter']: row['loss'] for row in rows}


def run_options(root, max_iters):
    options = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={root}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    return options + ['train_dataloader.batch_size=2', 'train_cfg.val_interval=1000',
                      f'train_cfg.max_iters={max_iters}', 'default_hooks.checkpoint.interval=2',
                      'default_hooks.checkpoint.max_keep_ckpts=1',
                      'default_hooks.logger.interval=1']


# ----------------------------------------------------------------------------- file writes
def test_atomic_backend_is_chosen_not_imposed(tmp_path, monkeypatch):
    from mmengine.fileio import get_file_backend
    from mmengine.runner import save_checkpoint
    target = tmp_path / 'iter_1.pth'
    # importing mmseg_msvit leaves mmengine's own local backend alone
    assert type(get_file_backend(str(target))).__name__ == 'LocalBackend'
    atomic = dict(backend='atomic_local')
    assert type(get_file_backend(str(target), backend_args=atomic)).__name__ == \
        'AtomicLocalBackend'
    save_checkpoint({'state_dict': {'w': torch.ones(2)}}, str(target), backend_args=atomic)

    # a failure in the middle of writing leaves the previous checkpoint intact, no temp files
    def broken_write(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'fsync', broken_write)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint({'state_dict': {'w': torch.zeros(2)}}, str(target), backend_args=atomic)
    monkeypatch.undo()
    torch.testing.assert_close(torch.load(target, weights_only=True)['state_dict']['w'],
                               torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_1.pth']


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    from mmseg_msvit.engine import atomic_write_bytes
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / 'a.bin', b'x')
        plain = tmp_path / 'b.bin'
        plain.write_bytes(b'x')
    finally:
        os.umask(old)
    assert (tmp_path / 'a.bin').stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- kill + resume
KILLED_RUN = '''
import os, signal, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
import test_engine  # registers LossRecorderHook
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillDuringSaveHook(Hook):
    """SIGKILL this process while the checkpoint of iteration `at` is being written: after its
    bytes are on disk, before the rename that would publish it."""

    def __init__(self, at):
        self.at = at

    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta']['iter'] != self.at:
            return
        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith('.pth'):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        os.replace = replace


train = test_engine.load_tool('tools/train.py')
train.main(sys.argv[1:])
'''


@pytest.fixture(scope='module')
def killed_and_resumed(synthetic_root, tmp_path_factory):
    """An uninterrupted 4-iteration run, and a run killed while saving iteration 4's checkpoint
    (max_keep_ckpts=1) and then resumed with --resume."""
    root = tmp_path_factory.mktemp('resume')
    data = synthetic_root / 'ade'
    train = load_tool('tools/train.py')

    def config(name, extra=''):
        path = root / f'{name}.py'
        path.write_text(f"_base_ = [{DEMO!r}]\ncustom_hooks = [dict(type='LossRecorderHook', "
                        f"path={str(root / (name + '.jsonl'))!r}){extra}]\n")
        return str(path)

    train.main([config('straight'), '--work-dir', str(root / 'straight'), '--cfg-options',
                *run_options(data, 4)])

    killed = config('killed', ", dict(type='KillDuringSaveHook', at=4)")
    script = root / 'killed_run.py'
    script.write_text(KILLED_RUN.format(repo=REPO, tests=osp.dirname(osp.abspath(__file__))))
    proc = subprocess.run([sys.executable, str(script), killed, '--work-dir',
                           str(root / 'work'), '--cfg-options', *run_options(data, 4)],
                          capture_output=True, text=True, timeout=300)
    after_kill = sorted(os.listdir(root / 'work'))
    last = (root / 'work' / 'last_checkpoint').read_text()
    seconds_at_kill = torch.load(last, weights_only=True)['meta'].get('train_seconds')
    resumed = config('resumed')
    runner = train.main([resumed, '--work-dir', str(root / 'work'), '--resume',
                         '--cfg-options', *run_options(data, 4)])
    return dict(root=root, proc=proc, after_kill=after_kill, last=last, runner=runner,
                seconds_at_kill=seconds_at_kill)


def test_kill_during_save_loses_nothing_and_resume_finishes(killed_and_resumed):
    run = killed_and_resumed
    assert run['proc'].returncode == -9, run['proc'].stderr[-2000:]
    # the old checkpoint is still there, last_checkpoint points at it, the torso is hidden
    assert 'iter_2.pth' in run['after_kill'] and 'iter_4.pth' not in run['after_kill']
    assert run['last'].endswith('iter_2.pth')
    assert any(name.startswith('.iter_4.pth.') and name.endswith('.tmp')
               for name in run['after_kill'])
    work = run['root'] / 'work'
    assert run['runner'].iter == 4
    names = sorted(os.listdir(work))
    assert 'iter_4.pth' in names and 'iter_2.pth' not in names  # max_keep_ckpts=1 kept
    assert not [name for name in names if name.endswith('.tmp')]  # leftovers cleaned
    assert (work / 'iter_4.pth').stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resumed_run_repeats_the_uninterrupted_losses(killed_and_resumed):
    root = killed_and_resumed['root']
    straight = read_losses(root / 'straight.jsonl')
    killed = read_losses(root / 'killed.jsonl')
    resumed = read_losses(root / 'resumed.jsonl')
    assert sorted(straight) == [1, 2, 3, 4] and sorted(resumed) == [3, 4]
    # the killed process trained exactly as the uninterrupted one (deterministic set-up) ...
    assert [killed[i] for i in (1, 2)] == [straight[i] for i in (1, 2)]
    # ... and the resumed run continues it loss for loss (Gumbel noise, augmentation, probe)
    assert [resumed[i] for i in (3, 4)] == [straight[i] for i in (3, 4)]


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    from mmseg_msvit.engine import get_random_state, set_random_state
    torch.save({'random_state': get_random_state()}, tmp_path / 'c.pth')
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_random_state(torch.load(tmp_path / 'c.pth', weights_only=True)['random_state'])
    again = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]


# ----------------------------------------------------------------------------- never code
def test_resume_never_executes_config_text_from_a_checkpoint(killed_and_resumed, synthetic_root,
                                                             tmp_path):
    work = killed_and_resumed['root'] / 'work'
    marker = tmp_path / 'executed'
    checkpoint = torch.load(work / 'iter_4.pth', weights_only=True)
    # mmengine's resume runs Config.fromstring(meta['config']) to read the GPU count
    checkpoint['meta']['config'] = f"__import__('os').system('touch {marker}')"
    evil_dir = tmp_path / 'work'
    evil_dir.mkdir()
    torch.save(checkpoint, evil_dir / 'iter_4.pth')
    (evil_dir / 'last_checkpoint').write_text(str(evil_dir / 'iter_4.pth'))
    train = load_tool('tools/train.py')
    runner = train.main([DEMO, '--work-dir', str(evil_dir), '--resume', '--cfg-options',
                         *run_options(synthetic_root / 'ade', 4)])
    assert runner.iter == 4 and not marker.exists()

    # mmseg's own tools/train.py with a config whose custom_hooks leave out every hook of ours:
    # the protection is in the loading path, not in a hook
    import mmseg
    mmseg_train = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')
    no_hooks = tmp_path / 'no_hooks.py'
    no_hooks.write_text(f"_base_ = [{DEMO!r}]\ncustom_hooks = []\n")
    (evil_dir / 'last_checkpoint').write_text(str(evil_dir / 'iter_4.pth'))
    proc = subprocess.run([sys.executable, mmseg_train, str(no_hooks), '--work-dir', str(evil_dir),
                           '--resume', '--cfg-options', *run_options(synthetic_root / 'ade', 5)],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (evil_dir / 'iter_5.pth').exists() or 'Iter(train) [5/5]' in proc.stdout + proc.stderr
    assert not marker.exists()
    assert "ignored the config text in meta['config']" in proc.stdout + proc.stderr


def test_loading_path_keeps_plain_config_text_and_drops_code(tmp_path):
    """mmengine's checkpoint loaders (resume, load_from, init_model, inferencers) keep the config
    text mmengine writes and drop any that would compute something when mmengine executes it."""
    from mmengine.config import Config
    from mmengine.runner.checkpoint import CheckpointLoader

    plain = Config.fromfile(DEMO).pretty_text
    marker = tmp_path / 'executed'
    code = f"_x = __import__('os').system('touch {marker}')"
    torch.save({'meta': {'cfg': plain, 'config': code},
                'message_hub': {'runtime_info': {'cfg': "model = dict(type=open('/etc/passwd'))"}},
                'state_dict': {'w': torch.ones(1)}}, tmp_path / 'a.pth')
    loaded = CheckpointLoader.load_checkpoint(str(tmp_path / 'a.pth'))
    assert loaded['meta']['cfg'] == plain and 'config' not in loaded['meta']
    assert 'cfg' not in loaded['message_hub']['runtime_info']
    Config.fromstring(loaded['meta']['cfg'], '.py')  # what mmengine would do with it
    assert not marker.exists()
    # a custom_imports of another package is not plain data either (importing runs code)
    torch.save({'meta': {'cfg': "custom_imports = dict(imports=['antigravity'])\na = 1"}},
               tmp_path / 'b.pth')
    assert 'cfg' not in CheckpointLoader.load_checkpoint(str(tmp_path / 'b.pth'))['meta']


# ----------------------------------------------------------------------------- NaN
def test_non_finite_loss_stops_training_naming_the_iteration(synthetic_root, tmp_path):
    train = load_tool('tools/train.py')
    options = run_options(synthetic_root / 'ade', 3) + ['optim_wrapper.optimizer.lr=1e30']
    config = tmp_path / 'nan.py'
    # a NaN pixel in every image from the second iteration on
    config.write_text(f"_base_ = [{DEMO!r}]\n"
                      "custom_hooks = [dict(type='NaNInputHook', start=2)]\n")
    with pytest.raises(FloatingPointError, match=r'iteration 2: non-finite loss'):
        train.main([str(config), '--work-dir', str(tmp_path / 'w'), '--cfg-options', *options])


@HOOKS.register_module(force=True)
class NaNInputHook(Hook):

    def __init__(self, start):
        self.start = start

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 >= self.start:
            for image in data_batch['inputs']:
                image[:] = 0
            data_batch['inputs'][0] = data_batch['inputs'][0].float() * float('nan')


def _epoch_runner(work_dir, max_epochs, resume, record):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Noisy(BaseModel):
        """Its loss draws random numbers, as the gate's Gumbel noise does."""

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, inputs, targets, mode='loss'):
            noisy = inputs + 0.1 * torch.randn_like(inputs)
            return dict(loss=((self.linear(noisy) - targets)**2).mean())

    class Data(torch.utils.data.Dataset):

        def __len__(self):
            return 8

        def __getitem__(self, index):
            gen = torch.Generator().manual_seed(index)
            return dict(inputs=torch.randn(4, generator=gen),
                        targets=torch.randn(1, generator=gen))

    torch.manual_seed(0)  # the same initial weights in every run
    return Runner(
        model=Noisy(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=Data(), sampler=dict(type='DefaultSampler', shuffle=True),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='SafeCheckpointHook', interval=1)),
        custom_hooks=[dict(type='ExactResumeHook'), dict(type='LossRecorderHook', path=record)],
        resume=resume, randomness=dict(seed=0),
        experiment_name=f'epochs_{max_epochs}_{resume}_{osp.basename(record)}')


def test_epoch_based_resume_repeats_the_uninterrupted_losses(tmp_path):
    _epoch_runner(tmp_path / 'straight', 2, False, str(tmp_path / 'straight.jsonl')).train()
    _epoch_runner(tmp_path / 'cut', 1, False, str(tmp_path / 'first.jsonl')).train()
    _epoch_runner(tmp_path / 'cut', 2, True, str(tmp_path / 'second.jsonl')).train()
    straight, second = read_losses(tmp_path / 'straight.jsonl'), read_losses(
        tmp_path / 'second.jsonl')
    assert sorted(second) == [5, 6, 7, 8]
    assert [second[i] for i in (5, 6, 7, 8)] == [straight[i] for i in (5, 6, 7, 8)]


def test_training_time_adds_every_resumed_part(killed_and_resumed):
    from types import SimpleNamespace

    from mmengine.logging import MessageHub

    from mmseg_msvit.engine import TrainingTimeHook
    final = torch.load(killed_and_resumed['root'] / 'work' / 'iter_4.pth', weights_only=True)
    # the resumed run starts from the killed run's time at its last checkpoint and adds its own
    at_kill = killed_and_resumed['seconds_at_kill']
    hook = next(h for h in killed_and_resumed['runner'].hooks if isinstance(h, TrainingTimeHook))
    assert at_kill > 0 and hook.resumed_seconds == at_kill
    assert final['meta']['train_seconds'] > at_kill
    # the hook on its own: a resume adds the checkpoint's figure, a load_from start does not
    hook = TrainingTimeHook()
    resume = SimpleNamespace(_resume=True, message_hub=MessageHub.get_instance('time_hook'))
    hook.after_load_checkpoint(resume, {'meta': {'train_seconds': 100.0}})
    hook.before_train(resume)
    checkpoint = {'meta': {}}
    hook.before_save_checkpoint(resume, checkpoint)
    assert 100.0 <= checkpoint['meta']['train_seconds'] < 110.0
    hook.after_train(resume)
    assert resume.message_hub.get_info('train_seconds') >= 100.0
    fresh = TrainingTimeHook()
    fresh.after_load_checkpoint(SimpleNamespace(_resume=False), {'meta': {'train_seconds': 100.0}})
    fresh.before_train(None)
    assert fresh.seconds() < 10.0


def test_optimizer_custom_keys_are_checked_against_the_parameters():
    """mmengine drops a custom_keys entry that matches no parameter without a word: an entry
    that names a renamed part is refused with its name now; others are left alone."""
    from types import SimpleNamespace

    from mmengine.config import Config

    from mmseg_msvit.engine import CustomKeysCheckHook, check_custom_keys
    from mmseg_msvit.models import MSViT
    model = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                  out_indices=(1, ), coarse_detail=True)
    names = [f'backbone.{name}' for name, _ in model.named_parameters()]
    check_custom_keys({'backbone.patch_embed.coarse_embed': {}, 'pos_embed': {},
                       'cls_token': {}, 'norm': {}}, names)  # every one matches
    with pytest.raises(ValueError, match=r"'backbone\.coarse_embed' matches no parameter: the "
                       r"part is named 'backbone\.patch_embed\.coarse_embed'"):
        check_custom_keys({'backbone.coarse_embed': dict(lr_mult=10.0)}, names)
    with pytest.raises(ValueError, match=r"'backbone\.patch_embed\.pos_embed'"):
        check_custom_keys({'backbone.pos_embed': {}}, names)
    check_custom_keys({'gate_loss': dict(decay_mult=0.0)}, names)  # a shared schedule's key
    # the hook reads the run's config and model (a DDP-wrapped one through .module)
    segmentor = torch.nn.Module()
    segmentor.backbone = model
    runner = SimpleNamespace(model=SimpleNamespace(module=segmentor), cfg=Config(dict(
        optim_wrapper=dict(paramwise_cfg=dict(custom_keys={'backbone.coarse_embed': {}})))))
    with pytest.raises(ValueError, match='backbone.patch_embed.coarse_embed'):
        CustomKeysCheckHook().before_train(runner)
    runner.cfg.optim_wrapper.paramwise_cfg.custom_keys = {'backbone.patch_embed': {}}
    CustomKeysCheckHook().before_train(runner)


def test_resuming_an_optimizer_of_the_older_parameter_layout_is_refused(tmp_path):
    """mmengine matches optimizer state to parameters by position: a checkpoint written when
    the coarse-token extras were backbone.coarse_embed.* (another position) is not resumed;
    its weights still start a new run."""
    from types import SimpleNamespace

    from mmseg_msvit.engine import CheckpointCheckHook
    from mmseg_msvit.models.checkpoints import CheckpointError
    runner = SimpleNamespace(_resume=True, _load_from=str(tmp_path / 'iter_8.pth'),
                             model=torch.nn.Module())
    older = {'state_dict': {'backbone.coarse_embed.proj.weight': torch.zeros(2, 2)},
             'optimizer': {'state': {}, 'param_groups': []}}
    with pytest.raises(CheckpointError, match=r"written when the coarse-token extras were "
                       r"backbone\.coarse_embed\.\*.*load_from="):
        CheckpointCheckHook().after_load_checkpoint(runner, older)
    from mmseg_msvit.engine.hooks import check_optimizer_layout
    check_optimizer_layout({'state_dict': {'backbone.patch_embed.coarse_embed.proj.weight': 0},
                            'optimizer': {}}, 'new.pth')  # the layout of now: resumed
