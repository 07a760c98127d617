"""Distributed training through the project's launcher (tools/dist_train.sh -> torchrun ->
tools/train.py --launcher pytorch): 2 CPU processes over gloo, DistributedDataParallel with
find_unused_parameters=False, so a trainable parameter without gradient stops the run at its
second iteration (as it would on 8 GPUs)."""
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'configs', 'msvit', 'demo_msvit_synthetic.py')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize('variant', ['gated', 'dense'])
def test_two_process_training_runs(variant, synthetic_root, tmp_path):
    root = synthetic_root / 'ade'
    options = [f'{loader}.dataset.data_root={root}' for loader in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
                'train_dataloader.batch_size=2', 'train_cfg.max_iters=3',
                'train_cfg.val_interval=1000', 'default_hooks.checkpoint.interval=3',
                'default_hooks.logger.interval=1']
    if variant == 'dense':  # the dense baseline: gate present but never run, no gate loss
        options += ['model.backbone.force_scale=fine', 'model.gate_loss=None',
                    'model.gate_probe=None']
    env = dict(os.environ, PORT=str(free_port()), OMP_NUM_THREADS='1',
               PATH=osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'dist_train.sh'), DEMO, '2',
                           '--work-dir', str(tmp_path), '--cfg-options', *options],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert '[dist] no GPU: 2 CPU processes over gloo' in log
    assert 'Iter(train) [3/3]' in log
    assert (tmp_path / 'iter_3.pth').exists()
