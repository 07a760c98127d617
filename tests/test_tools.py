"""tools/train.py (with --resume), tools/test.py and the gate visualisation, end to end on the
demo config and a tiny synthetic dataset."""
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'configs', 'msvit', 'demo_msvit_synthetic.py')
PROBE = {}


@HOOKS.register_module(force=True)
class ResumeProbeHook(Hook):
    """Records what training starts from (after any resume)."""

    def before_train(self, runner):
        PROBE['iter'] = runner.iter
        state = runner.optim_wrapper.optimizer.state_dict()['state']
        PROBE['exp_avg'] = {k: v['exp_avg'].clone() for k, v in state.items()}


def load_tool(relative):
    path = osp.join(REPO, relative)
    spec = importlib.util.spec_from_file_location(osp.splitext(osp.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_options(root):
    options = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={root}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    return options + ['train_dataloader.batch_size=2', 'train_cfg.val_interval=1000',
                      'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1']


@pytest.fixture(scope='module')
def trained(synthetic_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('demo_run')
    train = load_tool('tools/train.py')
    options = data_options(synthetic_root / 'ade') + ['train_cfg.max_iters=2']
    train.main([DEMO, '--work-dir', str(work_dir), '--cfg-options', *options])
    return work_dir, train


def test_train_writes_checkpoint_and_resumes_exactly(trained, synthetic_root):
    work_dir, train = trained
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.exists() and (work_dir / 'last_checkpoint').exists()
    saved = torch.load(checkpoint, weights_only=True)
    assert saved['meta']['iter'] == 2
    assert any(k.startswith('gate_loss.') for k in saved['state_dict'])  # GBaS prior kept
    probed = work_dir / 'demo_with_probe.py'
    probed.write_text(f"_base_ = [{DEMO!r}]\ncustom_hooks = [dict(type='ResumeProbeHook')]\n")
    options = data_options(synthetic_root / 'ade') + ['train_cfg.max_iters=3']
    PROBE.clear()
    runner = train.main([str(probed), '--work-dir', str(work_dir), '--resume', '--cfg-options',
                         *options])
    assert PROBE['iter'] == 2
    saved_state = saved['optimizer']['state']
    assert PROBE['exp_avg'].keys() == saved_state.keys()
    for key, value in PROBE['exp_avg'].items():
        torch.testing.assert_close(value, saved_state[key]['exp_avg'])
    assert runner.iter == 3 and (work_dir / 'iter_3.pth').exists()


def test_test_tool_reports_miou_and_gmacs(trained, synthetic_root, tmp_path):
    work_dir, _ = trained
    test = load_tool('tools/test.py')
    metrics = test.main([DEMO, str(work_dir / 'iter_2.pth'), '--work-dir', str(tmp_path),
                         '--cfg-options', *data_options(synthetic_root / 'ade')])
    assert 0 <= metrics['mIoU'] <= 100
    assert 0 < metrics['complexity/backbone_gmacs'] < 5
    assert 0 <= metrics['complexity/fine_fraction'] <= 1
    with pytest.raises(FileNotFoundError, match='checkpoint file'):
        test.main([DEMO, str(tmp_path / 'missing.pth')])


def test_visualize_gates_writes_pictures(trained, synthetic_root, tmp_path):
    work_dir, _ = trained
    tool = load_tool('tools/analysis_tools/visualize_gates.py')
    report = tool.main([DEMO, str(work_dir / 'iter_2.pth'), '--out-dir', str(tmp_path),
                        '--num-images', '2', '--cfg-options',
                        *data_options(synthetic_root / 'ade')])
    from PIL import Image
    overview = report['overview']
    assert osp.exists(overview)
    pictures = sorted(p.name for p in tmp_path.iterdir())
    assert len(pictures) == 3  # two images + the overview
    assert Image.open(overview).size[0] > 3 * 96
    # detail statistics over the whole (tiny) validation split: scenes have both kinds of region
    assert report['detailed_regions'] > 0 and report['uniform_regions'] > 0
    assert 0 <= report['fine_on_detailed'] <= 1 and 0 <= report['fine_on_uniform'] <= 1


def test_gate_signal_measures_exact_benefit_and_estimates(trained, synthetic_root):
    work_dir, _ = trained
    tool = load_tool('tools/analysis_tools/gate_signal.py')
    options = data_options(synthetic_root / 'ade')
    report = tool.main([DEMO, str(work_dir / 'iter_2.pth'), '--num-images', '1',
                        '--cfg-options', *options])
    # the test pipeline resizes 96x128 to 192x256: 6 x 8 regions, each labelled one measured once
    assert 24 < report['regions'] <= 48
    assert 0 <= report['exact_auc'] <= 1 or report['exact_auc'] != report['exact_auc']
    for mode in ('scale', 'mix'):
        for state in ('coarse', 'fine'):
            sign = report[f'{mode}_{state}_sign']
            assert sign != sign or 0 <= sign <= 1  # NaN when no region is in that state
    assert tool.auc([2, 3], [1]) == 1.0 and tool.auc([1], [1]) == 0.5
    assert tool.auc([0], [1, 2]) == 0.0
    with pytest.raises(ValueError, match='--fine-fraction must lie in'):
        tool.main([DEMO, str(work_dir / 'iter_2.pth'), '--fine-fraction', '2'])


def test_draw_gate_map_marks_fine_and_coarse_regions():
    import numpy as np
    from mmseg_msvit.visualization import draw_gate_map
    image = np.full((64, 64, 3), 128, np.uint8)
    fine_mask = np.array([[True, False], [False, False]])
    out = draw_gate_map(image, fine_mask, fine_colour=(255, 0, 0), coarse_colour=(0, 0, 255))
    assert out.shape == (64, 64, 3)
    assert tuple(out[0, 16]) == (255, 0, 0)  # fine token outline inside the fine region
    assert tuple(out[0, 48]) == (0, 0, 255)  # coarse outline at the region's edge only
    assert tuple(out[16, 48]) == (128, 128, 128)  # no 16 px line inside a coarse region
    assert out[8, 8, 0] > 128 and out[40, 40, 0] == 128  # tint only on fine regions


def test_get_flops_counts_real_images(trained, synthetic_root):
    work_dir, _ = trained
    tool = load_tool('tools/analysis_tools/get_flops.py')
    options = data_options(synthetic_root / 'ade')
    result = tool.main([DEMO, '--checkpoint', str(work_dir / 'iter_2.pth'), '--num-images', '2',
                        '--cfg-options', *options])
    assert len(result['backbone']) == 2
    # ViT-Ti on 192x256 px (the test resize): all coarse ~0.3, all fine + gate ~1.38 GMACs
    assert (result['backbone'] > 0.25e9).all() and (result['backbone'] < 1.45e9).all()
    assert (result['decode'] > 0).all()
    assert (result['total'] == result['backbone'] + result['decode']).all()


def test_benchmark_speed_reports_the_quotient(capsys):
    tool = load_tool('tools/analysis_tools/benchmark_speed.py')
    rows = tool.main(['--arch', 'tiny', '--sizes', '64', '--batch-sizes', '1', '--fractions',
                      '0.0', '1.0', '--repeats', '1', '--warmup', '0', '--mode', 'infer'])
    out = capsys.readouterr().out
    assert 'quotient' in out and len(rows) == 2
    ideal = {row[3]: row[9] for row in rows}
    assert ideal[1.0] == pytest.approx(1.0)  # all fine = dense
    assert ideal[0.0] > 3.0  # 4 regions of 1 token instead of 16


def test_benchmark_tradeoff_writes_csv_json_and_plot(trained, synthetic_root, tmp_path):
    import csv
    import json
    work_dir, _ = trained
    dense = tmp_path / 'dense.py'
    dense.write_text(f"_base_ = [{DEMO!r}]\n"
                     "model = dict(backbone=dict(force_scale='fine'), gate_loss=None)\n")
    checkpoint = str(work_dir / 'iter_2.pth')
    tool = load_tool('tools/analysis_tools/benchmark_tradeoff.py')
    rows = tool.main([DEMO, checkpoint, '--thresholds', '0.0', '1.0', '--baseline', str(dense),
                      checkpoint, 'dense', '--out-dir', str(tmp_path / 'out'), '--cfg-options',
                      *data_options(synthetic_root / 'ade')])
    assert [r['threshold'] for r in rows] == [0.0, 1.0, None]
    assert rows[0]['fine_fraction'] == 1.0 and rows[1]['fine_fraction'] == 0.0
    assert rows[0]['backbone_gmacs'] > rows[1]['backbone_gmacs']  # higher threshold, cheaper
    assert rows[2]['label'] == 'dense' and rows[2]['fine_fraction'] == 1.0
    with open(tmp_path / 'out' / 'tradeoff.csv') as f:
        assert len(list(csv.DictReader(f))) == 3
    assert len(json.loads((tmp_path / 'out' / 'tradeoff.json').read_text())) == 3
    assert (tmp_path / 'out' / 'tradeoff.png').stat().st_size > 1000
