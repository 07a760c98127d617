"""tools/train.py (with --resume), tools/test.py and the gate visualisation, end to end on the
demo config and a tiny synthetic dataset."""
import os
import os.path as osp

import pytest
from _helpers import load_tool
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'configs', 'msvit', 'demo_msvit_synthetic.py')
#: the shipped one-stage recipe switched to a frozen teacher (its two one-stage options off)
FROZEN_TEACHER = ['model.distill.teacher=checkpoint', 'model.distill.shared_grad_scale=1.0',
                  'model.distill.dense_running_stats=False']
PROBE = {}


@HOOKS.register_module(force=True)
class ResumeProbeHook(Hook):
    """Records what training starts from (after any resume)."""

    def before_train(self, runner):
        PROBE['iter'] = runner.iter
        state = runner.optim_wrapper.optimizer.state_dict()['state']
        PROBE['exp_avg'] = {k: v['exp_avg'].clone() for k, v in state.items()}


def data_options(root):
    options = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={root}', f'{loader}.num_workers=0',
                    f'{loader}.persistent_workers=False']
    return options + ['train_dataloader.batch_size=2', 'train_cfg.val_interval=1000',
                      'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1']


def dense_config(folder):
    """The demo model with every region forced fine (a dense config) in ``folder``."""
    dense = folder / 'dense.py'
    dense.write_text(f"_base_ = [{DEMO!r}]\n"
                     "model = dict(backbone=dict(force_scale='fine'), gate_loss=None, "
                     "gate_probe=None)\n")
    return dense


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
    for mode in ('scale', ):
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


def test_gate_pictures_keep_the_image_size_and_colours_apart_from_the_classes():
    """A photo that is not a multiple of 32 px is drawn at its own size (the padding the decision
    grid covers is not drawn as a black strip); the tints are the colours farthest from every
    class colour (the old red fine tint was the synthetic 'ball' class's); the prediction's
    legend names the classes it shows, the largest first."""
    import numpy as np
    from mmseg_msvit.datasets.synthetic import SCENE_CLASSES, SCENE_PALETTE
    from mmseg_msvit.visualization import draw_gate_map, present_classes, tint_colours
    image = np.full((50, 70, 3), 200, np.uint8)
    out = draw_gate_map(image, np.zeros((2, 3), bool))
    assert out.shape == (50, 70, 3) and out[49, 69].sum() > 0
    fine, coarse = tint_colours(SCENE_PALETTE)
    for tint in (fine, coarse):
        gaps = np.linalg.norm(np.asarray(SCENE_PALETTE) - np.asarray(tint), axis=1)
        assert gaps.min() > 150, (tint, gaps.min())
    assert fine != coarse
    label = np.zeros((8, 8), np.int64)
    label[:2] = 5  # 'ball', 16 pixels; 'sky' 48 pixels; 255 (ignore) left out
    label[7, 7] = 255
    assert [name for name, _ in present_classes(label, SCENE_CLASSES, SCENE_PALETTE)] == [
        'sky', 'ball']
    assert present_classes(label, SCENE_CLASSES, SCENE_PALETTE)[1][1] == tuple(SCENE_PALETTE[5])


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
    rows = tool.main(['--arch', 'tiny', '--sizes', '64', '--batch-sizes', '4', '--fractions',
                      '0.0', '0.5', '1.0', '--repeats', '1', '--warmup', '0', '--mode', 'infer',
                      '--kinds', 'equal', 'spread', 'padded', 'gate'])
    out = capsys.readouterr().out
    assert 'quotient' in out and 'time / equal' in out and len(rows) == 1 + 3 * 4
    ideal = {(row['kind'], row['fraction']): row['ideal_mac_ratio'] for row in rows}
    assert ideal[('equal', 1.0)] == pytest.approx(1.0)  # all fine = dense
    assert ideal[('equal', 0.0)] > 3.0  # 4 regions of 1 token instead of 16
    by = {(row['kind'], row['fraction']): row for row in rows}
    # spread batches keep the mean share but differ from image to image
    spread = by[('spread', 0.5)]
    assert spread['fine_mean'] == pytest.approx(0.5) and spread['fine_min'] < spread['fine_max']
    assert by[('padded', 0.5)]['fine_min'] == spread['fine_min']  # same decisions, padded path
    # the gate rows carry the share of time spent in gate + tokenizer
    assert 0.0 < by[('gate', 0.5)]['gate_tokenizer_share'] < 1.0
    assert by[('equal', 0.5)]['vs_equal'] == pytest.approx(1.0)
    # the spread of the repeats is reported; a wide one is flagged with a warning
    assert all(r['ms_min'] <= r['ms'] <= r['ms_max'] and r['spread'] >= 1.0 for r in rows)
    assert 'ms (min-max)' in out
    times = iter([0.0, 1.0, 0.0, 2.0, 0.0, 1.1])  # a step timed at 1 s, 2 s, 1.1 s
    monkey = tool.time.perf_counter
    tool.time.perf_counter = lambda: next(times)
    try:
        (fastest, median, slowest), = tool.time_interleaved([lambda: None], 3, 0,
                                                            torch.device('cpu'))
    finally:
        tool.time.perf_counter = monkey
    assert (fastest, median, slowest) == (1.0, 1.1, 2.0)
    wide = dict(rows[0], spread=2.0)
    assert ' !' in tool.format_row(wide) and ' !' not in tool.format_row(dict(rows[0],
                                                                                spread=1.0))


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


# ----------------------------------------------------------------------------- wrong inputs
@pytest.fixture(scope='module')
def wrong_files(trained, tmp_path_factory):
    """A gate file and a classification checkpoint: neither covers a segmentor."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    work_dir, _ = trained
    root = tmp_path_factory.mktemp('wrong')
    gate = root / 'gate.pth'
    load_tool('tools/transfer_gate.py').main([str(work_dir / 'iter_2.pth'), str(gate)])
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'msvit_cls', 'demo_msvit_cls_synthetic.py'))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        from mmpretrain.registry import MODELS
        cfg.model.pop('head_from_timm', None)
        classifier = MODELS.build(cfg.model)
    cls = root / 'cls.pth'
    torch.save({'state_dict': classifier.state_dict(), 'meta': {}}, cls)
    return dict(gate=str(gate), cls=str(cls), seg=str(work_dir / 'iter_2.pth'))


def test_evaluations_refuse_checkpoints_that_do_not_cover_the_model(wrong_files, synthetic_root,
                                                                    tmp_path):
    from mmseg_msvit.models.checkpoints import CheckpointError
    options = data_options(synthetic_root / 'ade')
    test = load_tool('tools/test.py')
    with pytest.raises(CheckpointError, match=r'a gate file.*missing.*gate_init'):
        test.main([DEMO, wrong_files['gate'], '--work-dir', str(tmp_path), '--cfg-options',
                   *options])
    with pytest.raises(CheckpointError, match=r'a classification model.*missing'):
        test.main([DEMO, wrong_files['cls'], '--work-dir', str(tmp_path), '--cfg-options',
                   *options])
    # the tools that build an evaluation model themselves
    with pytest.raises(CheckpointError, match='a gate file'):
        load_tool('tools/analysis_tools/get_flops.py').main(
            [DEMO, '--checkpoint', wrong_files['gate'], '--cfg-options', *options])
    with pytest.raises(CheckpointError, match='a classification model'):
        load_tool('tools/analysis_tools/visualize_gates.py').main(
            [DEMO, wrong_files['cls'], '--out-dir', str(tmp_path), '--cfg-options', *options])
    with pytest.raises(CheckpointError, match='a gate file'):
        load_tool('tools/analysis_tools/benchmark_tradeoff.py').main(
            [DEMO, wrong_files['gate'], '--thresholds', '0.5', '--out-dir', str(tmp_path),
             '--cfg-options', *options])
    # a gate file given as the classification checkpoint of the transfer check
    cls_config = osp.join(REPO, 'configs', 'msvit_cls', 'demo_msvit_cls_synthetic.py')
    with pytest.raises(CheckpointError, match='a gate file'):
        load_tool('tools/analysis_tools/check_gate_transfer.py').main(
            [cls_config, wrong_files['gate'], DEMO, wrong_files['gate'], '--num-images', '1',
             '--cfg-options', *options])
    # load_from= at the start of training
    train = load_tool('tools/train.py')
    with pytest.raises(CheckpointError, match='a gate file'):
        train.main([DEMO, '--work-dir', str(tmp_path / 'w'), '--cfg-options', *options,
                    'train_cfg.max_iters=1', f"load_from={wrong_files['gate']}"])


def test_gate_init_with_a_model_checkpoint_says_to_extract_the_gate(wrong_files):
    from mmseg_msvit.models import MSViT
    backbone = MSViT(arch=dict(embed_dims=32, depth=2, num_heads=2), img_size=64,
                     gate_init=dict(checkpoint=wrong_files['seg']))
    with pytest.raises(ValueError, match=r'a segmentation model, not a gate file.*'
                       r'tools/transfer_gate\.py'):
        backbone.init_weights()


def test_cli_errors_are_one_line_with_a_nonzero_exit(wrong_files, synthetic_root, tmp_path):
    import subprocess
    import sys
    bad = tmp_path / 'bad.py'
    bad.write_text("model = dict(\n")
    runs = {
        'gate': ['tools/test.py', DEMO, wrong_files['gate'], '--cfg-options',
                 *data_options(synthetic_root / 'ade')],
        'syntax': ['tools/train.py', str(bad)],
        'empty': ['tools/train.py', DEMO, '--cfg-options',
                  f'train_dataloader.dataset.data_root={tmp_path}'],
    }
    expected = {'gate': 'does not cover this model', 'syntax': f'{bad}.*syntax error',
                'empty': 'train_dataloader: image folder .* does not exist'}
    import re
    for name, command in runs.items():
        proc = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1, (name, proc.stderr[-1500:])
        last = proc.stderr.strip().splitlines()[-1]
        assert re.search(expected[name], last), (name, last)
        assert 'Traceback' not in proc.stderr, name


def test_transfer_gate_never_runs_checkpoint_text_nor_overwrites_its_source(trained, tmp_path):
    work_dir, _ = trained
    tool = load_tool('tools/transfer_gate.py')
    source = torch.load(work_dir / 'iter_2.pth', weights_only=True)
    marker = tmp_path / 'executed'
    # plain strings and tensors pass weights_only; the config text must never run
    source['meta']['cfg'] = (f"__import__('os').system('touch {marker}')\n" +
                             source['meta']['cfg'])
    evil = tmp_path / 'evil.pth'
    torch.save(source, evil)
    gate = tool.main([str(evil), str(tmp_path / 'gate.pth')])
    assert not marker.exists()
    # the normalisation was still read from the (parsed, not executed) config text
    assert gate['meta']['mean'] == [123.675, 116.28, 103.53] and gate['meta']['bgr_to_rgb']
    size = evil.stat().st_size
    with pytest.raises(FileExistsError, match='is the source checkpoint'):
        tool.main([str(evil), str(evil)])
    assert evil.stat().st_size == size
    with pytest.raises(FileExistsError, match='exists; pass --force'):
        tool.main([str(evil), str(tmp_path / 'gate.pth')])
    tool.main([str(evil), str(tmp_path / 'gate.pth'), '--force'])
    with pytest.raises(IsADirectoryError, match='is a directory'):
        tool.main([str(evil), str(tmp_path)])
    with pytest.raises(ValueError, match='already a gate file'):
        tool.main([str(tmp_path / 'gate.pth'), str(tmp_path / 'gate2.pth')])


def test_benchmark_tradeoff_budget_curve_spans_the_range(trained, synthetic_root, tmp_path):
    work_dir, _ = trained
    tool = load_tool('tools/analysis_tools/benchmark_tradeoff.py')
    rows = tool.main([DEMO, str(work_dir / 'iter_2.pth'), '--budgets', '0.1', '0.5', '1.0',
                      '--out-dir', str(tmp_path), '--cfg-options',
                      *data_options(synthetic_root / 'ade')])
    assert [r['budget'] for r in rows] == [0.1, 0.5, 1.0]
    assert all(r['threshold'] is None for r in rows)
    gmacs = [r['backbone_gmacs'] for r in rows]
    assert gmacs[0] < gmacs[1] < gmacs[2]  # strictly rising with the budget
    assert rows[2]['fine_fraction'] == 1.0
    assert (tmp_path / 'tradeoff.png').stat().st_size > 1000


def test_export_onnx_tool_writes_and_checks_the_segmentor(trained, tmp_path):
    pytest.importorskip('onnxruntime')
    work_dir, _ = trained
    tool = load_tool('tools/deployment/export_onnx.py')
    out = tmp_path / 'demo.onnx'
    result = tool.main([DEMO, str(work_dir / 'iter_2.pth'), '--shape', '128', '160',
                        '--fine-budget', '0.5', '--out', str(out)])
    assert out.stat().st_size > 10000 and result['max_abs_difference'] < 1e-4
    checkpoint = work_dir / 'iter_2.pth'
    before = checkpoint.read_bytes()
    base = [DEMO, str(checkpoint), '--shape', '128', '160', '--fine-budget', '0.5', '--out']
    with pytest.raises(FileExistsError, match='is the source checkpoint'):
        tool.main(base + [str(checkpoint), '--force'])
    assert checkpoint.read_bytes() == before
    written = out.read_bytes()
    with pytest.raises(FileExistsError, match='exists; pass --force'):
        tool.main(base + [str(out)])
    assert out.read_bytes() == written
    with pytest.raises(FileExistsError, match='not a regular file'):
        tool.main(base + ['/dev/null', '--force'])
    # a file that fails the onnxruntime check never replaces the old one, nor stays behind
    with pytest.raises(ValueError, match='export check failed.*not written'):
        tool.main(base + [str(out), '--force', '--atol', '-1'])
    assert out.read_bytes() == written
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]
    with pytest.raises(SystemExit):
        tool.parse_args([DEMO, str(work_dir / 'iter_2.pth'), '--shape', '128', '160',
                         '--fine-budget', '0'])


def test_load_from_keeps_the_gate_that_gate_init_loaded(trained, wrong_files, synthetic_root,
                                                         tmp_path):
    train = load_tool('tools/train.py')
    options = data_options(synthetic_root / 'ade') + [
        'train_cfg.max_iters=1', f"load_from={wrong_files['seg']}",
        f"model.backbone.gate_init.checkpoint={wrong_files['gate']}",
        'model.backbone.gate_init.freeze=True']
    runner = train.main([DEMO, '--work-dir', str(tmp_path), '--cfg-options', *options])
    gate = torch.load(wrong_files['gate'], weights_only=True)['state_dict']
    for key, value in runner.model.backbone.gate.state_dict().items():
        torch.testing.assert_close(value, gate[key])


def test_evaluation_weights_of_another_image_size_are_resized(trained):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from mmseg_msvit.models.checkpoints import load_model_weights
    work_dir, _ = trained
    init_default_scope('mmseg')
    cfg = Config.fromfile(DEMO)
    cfg.model.backbone.img_size = (256, 256)  # trained at 128: pos_embed 8x8 -> 16x16
    model = MODELS.build(cfg.model)
    load_model_weights(model, str(work_dir / 'iter_2.pth'))
    assert model.backbone.pos_embed.shape == (1, 1 + 16 * 16, 192)


# ------------------------------------------------------------------ checkpoints are never code
class _RunsCode:
    """A pickle that creates ``marker`` when it is loaded as code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return (os.system, (f'touch {self.marker}', ))


def test_no_loader_runs_a_checkpoint_even_with_weights_only_switched_off(
        trained, synthetic_root, tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 switches torch's default off; every path of the package
    and of mmengine's loaders still reads checkpoints as data and says so in one sentence."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.apis import init_model
    from mmseg.registry import MODELS

    from mmseg_msvit.models.checkpoints import CheckpointError
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': _RunsCode(marker)}, evil)
    refused = r"evil.pth' was refused: it holds objects other than tensors"
    options = data_options(synthetic_root / 'ade')
    # train --resume whose last_checkpoint names the crafted file
    work_dir = tmp_path / 'resume'
    work_dir.mkdir()
    (work_dir / 'last_checkpoint').write_text(str(evil))
    with pytest.raises(CheckpointError, match=refused):
        load_tool('tools/train.py').main([DEMO, '--work-dir', str(work_dir), '--resume',
                                          '--cfg-options', *options, 'train_cfg.max_iters=1'])
    with pytest.raises(CheckpointError, match=refused):
        load_tool('tools/analysis_tools/benchmark_tradeoff.py').main(
            [DEMO, str(evil), '--thresholds', '0.5', '--out-dir', str(tmp_path / 'out'),
             '--cfg-options', *options])
    with pytest.raises(CheckpointError, match=refused):
        init_model(DEMO, str(evil), device='cpu')
    # a Pretrained init_cfg of the decode head (mmengine's PretrainedInit)
    cfg = Config.fromfile(DEMO)
    cfg.model.decode_head.init_cfg = dict(type='Pretrained', checkpoint=str(evil))
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    with pytest.raises(CheckpointError, match=refused):
        model.init_weights()
    assert not marker.exists()


def test_evaluations_use_the_checkpoint_gate_not_gate_init(trained, synthetic_root, tmp_path):
    """A config that still names gate_init (as saved by a transfer run) evaluates the gate of
    the checkpoint: gate_init is read at the start of training only."""
    work_dir, _ = trained
    saved = torch.load(work_dir / 'iter_2.pth', weights_only=True)
    state = saved['state_dict']
    last_bias = max(k for k in state if k.startswith('backbone.gate.mlp.') and
                    k.endswith('.bias'))
    state[last_bias] = torch.full_like(state[last_bias], -100.0)  # every region coarse
    coarse = tmp_path / 'coarse_gate_model.pth'
    torch.save(saved, coarse)
    gate = tmp_path / 'gate.pth'
    load_tool('tools/transfer_gate.py').main([str(coarse), str(gate)])
    options = data_options(synthetic_root / 'ade') + [
        f'model.backbone.gate_init.checkpoint={gate}']
    metrics = load_tool('tools/test.py').main([DEMO, str(coarse), '--work-dir',
                                                str(tmp_path / 'test'), '--cfg-options',
                                                *options])
    assert metrics['complexity/fine_fraction'] == 0.0
    rows = load_tool('tools/analysis_tools/benchmark_tradeoff.py').main(
        [DEMO, str(coarse), '--thresholds', '0.5', '--out-dir', str(tmp_path / 'out'),
         '--cfg-options', *options])
    assert rows[0]['fine_fraction'] == 0.0
    # and a checkpoint without a gate is refused for evaluation even when gate_init is set
    del_gate = {k: v for k, v in state.items() if not k.startswith('backbone.gate.')}
    gateless = tmp_path / 'gateless.pth'
    torch.save(dict(saved, state_dict=del_gate), gateless)
    from mmseg_msvit.models.checkpoints import CheckpointError
    with pytest.raises(CheckpointError, match='backbone.gate'):
        load_tool('tools/test.py').main([DEMO, str(gateless), '--work-dir',
                                         str(tmp_path / 'test2'), '--cfg-options', *options])


def test_the_gate_on_your_own_images(trained, synthetic_root, tmp_path):
    """visualize_gates on image files without labels; the predictions of mmseg's inference API
    carry the fine mask and the image's GMACs; budget and the content gate from the command
    line."""
    import numpy as np
    from mmseg.apis import inference_model
    from PIL import Image

    from mmseg_msvit.apis import init_mixed_scale_model
    work_dir, _ = trained
    checkpoint = str(work_dir / 'iter_2.pth')
    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (('a.jpg', (100, 140)), ('b.png', (64, 64))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(photos / name)
    (photos / 'notes.txt').write_text('not an image')
    tool = load_tool('tools/analysis_tools/visualize_gates.py')
    report = tool.main([DEMO, checkpoint, '--images', str(photos), '--out-dir',
                        str(tmp_path / 'gates'), '--fine-budget', '0.5'])
    assert sorted(p.name for p in (tmp_path / 'gates').iterdir()) == [
        'a_gate.png', 'b_gate.png', 'gates_overview.png']
    assert all(abs(f - 0.5) <= 0.15 for f in report['fractions'])  # budget mode, per image
    with pytest.raises(FileNotFoundError, match='no image files'):
        tool.main([DEMO, checkpoint, '--images', str(work_dir), '--out-dir', str(tmp_path)])
    with pytest.raises(ValueError, match='--threshold 0.5 has no effect'):
        tool.main([DEMO, checkpoint, '--images', str(photos), '--out-dir', str(tmp_path),
                   '--threshold', '0.5', '--cfg-options', 'model.backbone.fine_budget=0.3'])
    # one call: any MSViT checkpoint as a content-gate model for mmseg's inference API
    model = init_mixed_scale_model(DEMO, checkpoint, fine_budget=0.25)
    result = inference_model(model, str(photos / 'a.jpg'))
    mask = result.msvit_fine_mask
    assert mask.dtype == torch.bool and mask.dim() == 2
    assert mask.float().mean() == pytest.approx(0.25, abs=0.1)
    assert result.msvit_backbone_macs > 0 and result.pred_sem_seg.shape == (100, 140)
    assert type(model.backbone.gate).__name__ == 'ContentGate'
    # tools/test.py --content-gate, and the same through --cfg-options on the gate's type
    test = load_tool('tools/test.py')
    metrics = test.main([DEMO, checkpoint, '--work-dir', str(tmp_path / 't'), '--content-gate',
                         '0.5', '--cfg-options', *data_options(synthetic_root / 'ade')])
    assert metrics['complexity/fine_fraction'] == pytest.approx(0.5, abs=0.1)
    metrics = test.main([DEMO, checkpoint, '--work-dir', str(tmp_path / 't2'), '--cfg-options',
                         *data_options(synthetic_root / 'ade'), 'model.backbone.gate.type='
                         'ContentGate', 'model.backbone.fine_budget=0.25', 'model.gate_loss=None',
                         'model.gate_probe=None'])
    assert metrics['complexity/fine_fraction'] == pytest.approx(0.25, abs=0.1)


def test_show_dir_draws_every_test_image(trained, synthetic_root, tmp_path):
    work_dir, _ = trained
    test = load_tool('tools/test.py')
    test.main([DEMO, str(work_dir / 'iter_2.pth'), '--work-dir', str(tmp_path / 'w'),
               '--show-dir', str(tmp_path / 'show'), '--cfg-options',
               *data_options(synthetic_root / 'ade')])
    drawn = [p for p in (tmp_path / 'show').rglob('*.png')]
    assert len(drawn) == 2  # the two validation images, not 1 in 50


def test_onnx_file_names_its_tensors_carries_metadata_and_runs_as_the_readme_shows(
        trained, tmp_path, monkeypatch):
    pytest.importorskip('onnxruntime')
    import json
    import re

    import numpy as np
    import onnxruntime
    from PIL import Image
    work_dir, _ = trained
    tool = load_tool('tools/deployment/export_onnx.py')
    out = tmp_path / 'model.onnx'
    result = tool.main([DEMO, str(work_dir / 'iter_2.pth'), '--shape', '96', '128',
                        '--fine-budget', '0.5', '--labels', '--out', str(out)])
    assert result['max_abs_difference'] <= 1e-3
    session = onnxruntime.InferenceSession(str(out))
    assert [i.name for i in session.get_inputs()] == ['image']
    assert [o.name for o in session.get_outputs()] == ['labels']
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta['input_size']) == [96, 128] and float(meta['fine_budget']) == 0.5
    assert json.loads(meta['classes'])[:2] == ['sky', 'wall']
    assert len(json.loads(meta['mean'])) == 3 and json.loads(meta['bgr_to_rgb']) is True
    # the README's onnxruntime example, as written, on a photo
    readme = open(osp.join(REPO, 'README.md'), encoding='utf-8').read()
    code = re.search(r'<!-- onnx-example-start -->\n```python\n(.*?)```', readme, re.S).group(1)
    # a photo of another aspect ratio than the model's input: resized keeping its ratio, padded,
    # and the labels of the padding cut off
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 200, 3), np.uint8)).save(
        tmp_path / 'photo.jpg')
    monkeypatch.chdir(tmp_path)
    printed = {}
    scope = {'print': lambda x: printed.update(x)}
    exec(compile(code, 'README.md', 'exec'), scope)  # noqa: S102
    assert printed and set(printed) <= set(json.loads(meta['classes']))
    assert sum(printed.values()) == pytest.approx(1.0, abs=0.01)
    assert scope['labels'].shape == (64, 128)  # 100x200 scaled by 0.64 into 96x128
    # logits at the input size
    full = tool.main([DEMO, str(work_dir / 'iter_2.pth'), '--shape', '96', '128',
                      '--fine-budget', '0.5', '--full-size', '--out', str(tmp_path / 'f.onnx')])
    shape = onnxruntime.InferenceSession(full['path']).get_outputs()[0].shape
    assert shape[-2:] == [96, 128]


def test_recipe_step_2_starts_from_a_dense_checkpoint_and_resumes(trained, synthetic_root,
                                                                  tmp_path):
    """demo_recipe_synthetic.py with a frozen teacher (model.distill.teacher=checkpoint) and
    load_from = a dense model: the teacher is that file; a --resume without load_from finds the
    same teacher in the last checkpoint. As shipped (one stage) it needs load_from too."""
    work_dir, train = trained
    recipe = osp.join(REPO, 'configs', 'msvit', 'demo_recipe_synthetic.py')
    dense = str(work_dir / 'iter_2.pth')
    run = tmp_path / 'recipe'
    for resume in ([], ['--resume']):  # no load_from; a --resume that finds no checkpoint
        with pytest.raises(ValueError, match=r"one-stage recipe .* loaded no weights"):
            train.main([recipe, '--work-dir', str(tmp_path / 'nostart'), *resume,
                        '--cfg-options', *data_options(synthetic_root / 'ade'),
                        'train_cfg.max_iters=1'])
    options = data_options(synthetic_root / 'ade') + ['default_hooks.checkpoint.interval=1',
                                                      *FROZEN_TEACHER]
    runner = train.main([recipe, '--work-dir', str(run), '--cfg-options', *options,
                         'train_cfg.max_iters=2', f'load_from={dense}'])
    assert runner.model.distill.teacher_checkpoint == dense
    assert 'loss_distill' in runner.message_hub.log_scalars.keys() or any(
        'loss_distill' in key for key in runner.message_hub.log_scalars)
    resumed = train.main([recipe, '--work-dir', str(run), '--resume', '--cfg-options',
                          *options, 'train_cfg.max_iters=3'])
    assert resumed.iter == 3 and resumed.model.distill.teacher_checkpoint == dense
    with pytest.raises(ValueError, match='distill needs the dense teacher'):
        train.main([recipe, '--work-dir', str(tmp_path / 'fresh'), '--cfg-options', *options,
                    'train_cfg.max_iters=1'])


def test_compare_baselines_sets_the_model_against_the_simple_alternatives(trained,
                                                                         synthetic_root,
                                                                         tmp_path):
    import json
    work_dir, _ = trained
    checkpoint = str(work_dir / 'iter_2.pth')
    dense = dense_config(tmp_path)
    tool = load_tool('tools/analysis_tools/compare_baselines.py')
    rows = tool.main([DEMO, checkpoint, '--dense', str(dense), checkpoint, '--budget', '0.5',
                      '--scales', '0.5', '0.75', '--out-dir', str(tmp_path / 'out'),
                      '--cfg-options', *data_options(synthetic_root / 'ade')])
    labels = [r['label'] for r in rows]
    assert labels[0] == 'dense ViT' and len(rows) == 5
    assert 'downscaled to 0.5x' in labels[1] and 'content gate' in labels[3]
    by = dict(zip(labels, rows))
    assert rows[0]['backbone_ratio'] == rows[0]['model_ratio'] == 1.0
    # downscaling shrinks the backbone and the head; mixed-scale tokens only the backbone
    assert rows[1]['model_ratio'] < rows[2]['model_ratio'] < 1.0
    assert rows[3]['model_ratio'] > rows[3]['backbone_ratio']
    assert rows[3]['fine_fraction'] == pytest.approx(0.5, abs=0.1) and rows[4]['fine_fraction'] \
        == pytest.approx(0.5, abs=0.1)
    assert all(0 <= r['mIoU'] <= 100 for r in rows) and by
    saved = json.loads((tmp_path / 'out' / 'compare.json').read_text())
    assert [r['label'] for r in saved] == labels
    assert (tmp_path / 'out' / 'compare.png').stat().st_size > 1000


def test_a_distillation_run_never_replaces_its_teacher_nor_resumes_from_another(
        trained, synthetic_root, tmp_path):
    """load_from (= the teacher) inside the run's work_dir under a name the run's checkpoints
    take is refused before the first step; a resume whose teacher file changed is refused; an
    unchanged teacher resumes."""
    import shutil
    work_dir, train = trained
    recipe = osp.join(REPO, 'configs', 'msvit', 'demo_recipe_synthetic.py')
    options = data_options(synthetic_root / 'ade') + ['default_hooks.checkpoint.interval=1',
                                                      *FROZEN_TEACHER]
    run = tmp_path / 'run'
    run.mkdir()
    inside = run / 'iter_1.pth'
    shutil.copy(work_dir / 'iter_2.pth', inside)
    with pytest.raises(ValueError, match=r"load_from .*iter_1\.pth.* is in this run's checkpoint "
                       'folder .* overwrite it or delete it'):
        train.main([recipe, '--work-dir', str(run), '--cfg-options', *options,
                    'train_cfg.max_iters=1', f'load_from={inside}'])
    assert inside.read_bytes() == (work_dir / 'iter_2.pth').read_bytes()
    teacher = tmp_path / 'teacher.pth'
    shutil.copy(work_dir / 'iter_2.pth', teacher)
    other = tmp_path / 'other'
    runner = train.main([recipe, '--work-dir', str(other), '--cfg-options', *options,
                         'train_cfg.max_iters=1', f'load_from={teacher}'])
    digest = runner.model.distill_teacher_sha256
    assert digest and torch.load(other / 'iter_1.pth', weights_only=True)['meta'][
        'msvit_teacher_sha256'] == digest
    state = torch.load(teacher, weights_only=False)
    state['state_dict'] = {k: v + 0.01 if v.is_floating_point() else v
                           for k, v in state['state_dict'].items()}
    torch.save(state, teacher)  # the same path, another model
    with pytest.raises(ValueError, match='distillation teacher .*teacher.pth.* is not the file '
                       'this run started with'):
        train.main([recipe, '--work-dir', str(other), '--resume', '--cfg-options', *options,
                    'train_cfg.max_iters=2'])
    shutil.copy(work_dir / 'iter_2.pth', teacher)  # the original back: the resume goes on
    # resumed with the shipped one-stage config, the run would switch recipes midway: refused
    one_stage = [o for o in options if o not in FROZEN_TEACHER]
    with pytest.raises(ValueError, match='started with a frozen distillation teacher .* switch '
                       'recipes midway'):
        train.main([recipe, '--work-dir', str(other), '--resume', '--cfg-options', *one_stage,
                    'train_cfg.max_iters=2'])
    # the content gate has no weights: its score is recorded, and resuming with another refused
    assert torch.load(other / 'iter_1.pth', weights_only=True)['meta'][
        'msvit_content_gate'] == dict(structure_px=4, contrast=True)
    with pytest.raises(ValueError, match=r"content gate scoring \{'structure_px': 4, 'contrast': "
                       r"True\}.*model.backbone.gate.contrast=True"):
        train.main([recipe, '--work-dir', str(other), '--resume', '--cfg-options', *options,
                    'model.backbone.gate.contrast=False', 'train_cfg.max_iters=2'])
    assert train.main([recipe, '--work-dir', str(other), '--resume', '--cfg-options', *options,
                       'train_cfg.max_iters=2']).iter == 2


def test_a_one_stage_run_resumes_only_under_the_options_it_started_with(trained, synthetic_root,
                                                                         tmp_path):
    """The shipped one-stage recipe records how its mixed pass shares the model (nothing in the
    weights tells): a resume under other options is refused naming the options to resume with;
    the same options resume."""
    work_dir, train = trained
    recipe = osp.join(REPO, 'configs', 'msvit', 'demo_recipe_synthetic.py')
    options = data_options(synthetic_root / 'ade') + ['default_hooks.checkpoint.interval=1']
    run = tmp_path / 'run'
    train.main([recipe, '--work-dir', str(run), '--cfg-options', *options,
                'train_cfg.max_iters=1', f"load_from={work_dir / 'iter_2.pth'}"])
    assert torch.load(run / 'iter_1.pth', weights_only=True)['meta']['msvit_one_stage'] == dict(
        student_task_loss=True, shared_grad_scale=0.25, dense_running_stats=True)
    for other, found in ((['model.distill.shared_grad_scale=1.0'], "'shared_grad_scale': 1.0"),
                         (['model.distill.dense_running_stats=False'],
                          "'dense_running_stats': False")):
        with pytest.raises(ValueError, match=f"started with in-place distillation .*{found}.*"
                           'model.distill.shared_grad_scale=0.25 '
                           'model.distill.dense_running_stats=True'):
            train.main([recipe, '--work-dir', str(run), '--resume', '--cfg-options', *options,
                        *other, 'train_cfg.max_iters=2'])
    assert train.main([recipe, '--work-dir', str(run), '--resume', '--cfg-options', *options,
                       'train_cfg.max_iters=2']).iter == 2


def test_tools_answer_the_question_asked_or_refuse_it(trained, synthetic_root, tmp_path):
    """A budget sweep of a dense config has no gate to decide: refused, or answered with the
    content gate when asked; thresholds mean nothing for the content gate; a dense config is
    not 'this model at a budget'; a checkpoint with weights its config lacks (a recipe
    checkpoint given as the dense model) is refused, not evaluated without them."""
    work_dir, train = trained
    checkpoint = str(work_dir / 'iter_2.pth')
    dense = dense_config(tmp_path)
    tradeoff = load_tool('tools/analysis_tools/benchmark_tradeoff.py')
    data = data_options(synthetic_root / 'ade')
    with pytest.raises(ValueError, match=r"forces every region fine .*--content-gate"):
        tradeoff.main([str(dense), checkpoint, '--budgets', '0.5', '--out-dir',
                       str(tmp_path / 't'), '--cfg-options', *data])
    rows = tradeoff.main([str(dense), checkpoint, '--budgets', '0.25', '0.75', '--content-gate',
                          '--out-dir', str(tmp_path / 't'), '--cfg-options', *data])
    assert [round(r['fine_fraction'], 1) for r in rows] == [0.2, 0.8] or \
        rows[0]['fine_fraction'] < rows[1]['fine_fraction'] < 1.0
    assert all('content gate' in r['label'] for r in rows)
    # a model whose own gate is a content gate keeps its score (structure, contrast), as test.py
    from mmseg_msvit.models import MSViT
    own = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                gate=dict(type='ContentGate', structure_px=4, contrast=True))
    swept = tradeoff.sweep_policy(own, budget=0.5, content_gate=True).gate
    assert (swept.structure_px, swept.contrast) == (4, True)
    assert tradeoff.sweep_policy(MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3),
                                       img_size=64), budget=0.5,
                                 content_gate=True).gate.structure_px is None
    with pytest.raises(SystemExit):
        tradeoff.parse_args([str(dense), checkpoint, '--thresholds', '0.5', '--content-gate'])
    compare = load_tool('tools/analysis_tools/compare_baselines.py')
    with pytest.raises(ValueError, match=r'forces every region fine .*never trained'):
        compare.main([str(dense), checkpoint, '--dense', str(dense), checkpoint,
                      '--out-dir', str(tmp_path / 'c'), '--cfg-options', *data])
    # a recipe (step 2) checkpoint given with the dense config: its extra weights are refused
    recipe = osp.join(REPO, 'configs', 'msvit', 'demo_recipe_synthetic.py')
    run = tmp_path / 'recipe'
    train.main([recipe, '--work-dir', str(run), '--cfg-options', *data,
                'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1',
                f'load_from={checkpoint}'])
    from mmseg_msvit.models.checkpoints import CheckpointError
    with pytest.raises(CheckpointError, match=r'weights this model does not have '
                       r'\(backbone\.patch_embed\.coarse_embed\.\*.*neck\.unpool\.\*'):
        compare.main([recipe, str(run / 'iter_1.pth'), '--dense', str(dense),
                      str(run / 'iter_1.pth'), '--out-dir', str(tmp_path / 'c'),
                      '--cfg-options', *data])


def test_gate_pictures_draw_what_the_model_saw_and_bad_inputs_are_one_line(trained, tmp_path):
    """A 16-bit PNG is drawn as the pipeline decoded it (cv2 scales it to 8 bits; PIL's RGB
    conversion clips it white); an empty or non-image file among --images, and a file as
    --out-dir, are one-line errors naming the file."""
    import numpy as np
    from PIL import Image
    work_dir, _ = trained
    checkpoint = str(work_dir / 'iter_2.pth')
    tool = load_tool('tools/analysis_tools/visualize_gates.py')
    deep = tmp_path / 'deep.png'
    ramp = (np.linspace(0, 60000, 64 * 96).reshape(64, 96)).astype(np.uint16)
    Image.fromarray(ramp).save(deep)
    from mmseg_msvit.cli import load_config
    drawn = tool.pipeline_image(str(deep), load_config(DEMO))
    assert drawn.dtype == np.uint8 and drawn.shape == (64, 96, 3)
    assert (drawn == 255).mean() < 0.05 and drawn.std() > 20  # a ramp, not a white sheet
    assert (np.asarray(Image.open(deep).convert('RGB')) == 255).mean() > 0.9  # PIL's clip
    folder = tmp_path / 'photos'
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / 'good.png')
    (folder / 'empty.jpg').write_bytes(b'')
    with pytest.raises(ValueError, match=r"--images: image .*empty\.jpg.* is an empty file"):
        tool.main([DEMO, checkpoint, '--images', str(folder), '--out-dir', str(tmp_path / 'o')])
    (folder / 'empty.jpg').write_bytes(b'this is text, not a jpeg')
    with pytest.raises(ValueError, match=r"--images: image .*empty\.jpg.* cannot be read as an "
                       'image'):
        tool.main([DEMO, checkpoint, '--images', str(folder), '--out-dir', str(tmp_path / 'o')])
    (folder / 'empty.jpg').unlink()
    (tmp_path / 'taken').write_text('a file')
    with pytest.raises(ValueError, match=r"--out-dir .*taken.* is an existing file"):
        tool.main([DEMO, checkpoint, '--images', str(folder), '--out-dir', str(tmp_path / 'taken')])


def test_a_rigged_file_in_the_torchvision_cache_is_refused_in_one_sentence(tmp_path, monkeypatch):
    """mmengine's torchvision:// scheme reads the hub cache; torch's own refusal advises
    weights_only=False (which would run the file): ours says it was refused."""
    import os

    from mmengine.runner.checkpoint import CheckpointLoader, get_torchvision_models

    from mmseg_msvit.models.checkpoints import CheckpointError
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    url = get_torchvision_models()['resnet18']
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    torch.save({'a': _Rigged()}, cache / os.path.basename(url))
    with pytest.raises(CheckpointError, match='was refused') as error:
        CheckpointLoader.load_checkpoint('torchvision://resnet18')
    assert 'weights_only=False' not in str(error.value) and '\n' not in str(error.value)


class _Rigged:

    def __reduce__(self):
        return (os.system, ('true', ))


def test_benchmark_model_speed_times_every_way_of_spending_less(tmp_path, capsys):
    """The whole segmentor, dense / mixed tokens / mixed-scale decoding / cheaper head /
    downscaled, in one interleaved loop; MAC ratios from what each row ran."""
    tool = load_tool('tools/analysis_tools/benchmark_model_speed.py')
    recipe = osp.join(REPO, 'configs', 'msvit', 'demo_recipe_synthetic.py')
    rows = tool.main([recipe, '--size', '128', '--batch-sizes', '2', '--repeats', '1',
                      '--warmup', '0', '--scales', '0.75', '--out-dir', str(tmp_path)])
    by = {row['kind']: row for row in rows}
    assert list(by) == ['dense', 'tokens', 'mixed', 'half_head', 'scale0.75']
    assert by['dense']['mac_ratio'] == 1.0 and by['dense']['speedup'] == 1.0
    # mixed-scale tokens save backbone MACs, mixed-scale decoding neck and head MACs on top
    assert by['tokens']['backbone_gmacs'] < by['dense']['backbone_gmacs']
    assert by['tokens']['decode_gmacs'] == pytest.approx(by['dense']['decode_gmacs'])
    assert by['mixed']['backbone_gmacs'] == pytest.approx(by['tokens']['backbone_gmacs'])
    assert by['mixed']['decode_gmacs'] < by['tokens']['decode_gmacs']
    assert by['half_head']['decode_gmacs'] < by['mixed']['decode_gmacs']
    assert by['scale0.75']['input'] == 96
    for row in rows:
        assert row['quotient'] == pytest.approx(row['speedup'] / row['mac_ratio'])
        assert 0.0 < row['backbone_time_share'] <= 1.0
    assert 'whole-model MAC ratio' in capsys.readouterr().out
    assert (tmp_path / 'speed.csv').exists() and (tmp_path / 'speed.json').exists()


def test_gate_pictures_of_a_dense_checkpoint_with_the_content_gate(trained, tmp_path, capsys):
    """A dense config forces every region fine: --fine-budget there is refused (it showed every
    region fine without a word), --content-gate draws the content gate's decisions, as
    tools/test.py --content-gate evaluates them."""
    import numpy as np
    from PIL import Image
    work_dir, _ = trained
    checkpoint = str(work_dir / 'iter_2.pth')
    dense = dense_config(tmp_path)
    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(photos / 'a.png')
    tool = load_tool('tools/analysis_tools/visualize_gates.py')
    with pytest.raises(ValueError, match=r"--fine-budget has no effect: the config forces every "
                       r"region fine .*use --content-gate 0.42"):
        tool.main([str(dense), checkpoint, '--images', str(photos), '--out-dir',
                   str(tmp_path / 'g'), '--fine-budget', '0.42'])
    report = tool.main([str(dense), checkpoint, '--images', str(photos), '--out-dir',
                        str(tmp_path / 'g'), '--content-gate', '0.5'])
    assert report['fractions'] == [0.5]  # 32 of the 64 regions of the 256 px input
    capsys.readouterr()
    with pytest.raises(SystemExit):  # one way of deciding per call
        tool.parse_args([str(dense), checkpoint, '--out-dir', 'x', '--content-gate', '0.5',
                         '--fine-budget', '0.5'])
    assert 'not allowed with argument' in capsys.readouterr().err


def test_test_tool_writes_each_images_cost_and_decisions(trained, synthetic_root, tmp_path):
    """tools/test.py --per-image: one JSON line per test image whose figures average to the
    aggregate metrics; the fine mask is on the 32 px grid of the input the model saw."""
    import json

    import numpy as np
    work_dir, _ = trained
    checkpoint = str(work_dir / 'iter_2.pth')
    out = tmp_path / 'per_image.jsonl'
    test = load_tool('tools/test.py')
    metrics = test.main([DEMO, checkpoint, '--work-dir', str(tmp_path / 't'), '--per-image',
                         str(out), '--content-gate', '0.5', '--cfg-options',
                         *data_options(synthetic_root / 'ade')])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    from mmseg_msvit.cli import load_config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    cfg = load_config(DEMO, {'test_dataloader.dataset.data_root': str(synthetic_root / 'ade')})
    init_default_scope('mmseg')
    assert len(rows) == len(DATASETS.build(cfg.test_dataloader.dataset)) > 1
    assert all(osp.isfile(r['img_path']) for r in rows)
    assert np.mean([r['backbone_gmacs'] for r in rows]) == pytest.approx(
        metrics['complexity/backbone_gmacs'], abs=1e-3)
    assert np.mean([r['model_gmacs'] for r in rows]) == pytest.approx(
        metrics['complexity/model_gmacs'], abs=1e-3)
    for row in rows:
        mask = np.asarray(row['fine_mask'])
        assert mask.ndim == 2 and set(np.unique(mask)) <= {0, 1}
        assert mask.mean() == pytest.approx(row['fine_fraction'], abs=1e-6)
        assert row['model_gmacs'] == pytest.approx(row['backbone_gmacs'] + row['decode_gmacs'])
    with pytest.raises(FileExistsError, match='is the source checkpoint'):
        test.main([DEMO, checkpoint, '--per-image', checkpoint])
