"""Command-line tools refuse bad arguments up front, naming the argument and the value."""
import os.path as osp

import pytest
from _helpers import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def refused(parse, argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize('value', ['5', '-0.1', 'nan', 'half'])
def test_visualize_gates_threshold_must_be_in_unit_interval(value, capsys):
    tool = load_tool('tools/analysis_tools/visualize_gates.py')
    err = refused(tool.parse_args, ['cfg.py', 'ckpt.pth', '--out-dir', 'out', '--threshold',
                                    value], capsys)
    assert '--threshold' in err and value in err and '[0, 1]' in err
    args = tool.parse_args(['cfg.py', 'ckpt.pth', '--out-dir', 'out', '--threshold', '1'])
    assert args.threshold == 1.0


@pytest.mark.parametrize('value', ['5', '-0.1', 'nan'])
def test_benchmark_tradeoff_thresholds_must_be_in_unit_interval(value, capsys):
    tool = load_tool('tools/analysis_tools/benchmark_tradeoff.py')
    err = refused(tool.parse_args, ['cfg.py', 'ckpt.pth', '--thresholds', '0.5', value],
                  capsys)
    assert '--thresholds' in err and value in err and '[0, 1]' in err


@pytest.mark.parametrize('value', ['0', '-3'])
def test_check_gate_transfer_needs_at_least_one_image(value, capsys):
    tool = load_tool('tools/analysis_tools/check_gate_transfer.py')
    err = refused(tool.parse_args, ['cls.py', 'cls.pth', 'seg.py', 'gate.pth',
                                    '--num-images', value], capsys)
    assert '--num-images' in err and value in err and '>= 1' in err
    assert tool.parse_args(['cls.py', 'cls.pth', 'seg.py', 'gate.pth',
                            '--num-images', '1']).num_images == 1


@pytest.mark.parametrize('argv, expected', [
    (['--batch-sizes', '0'], ['--batch-sizes', '0', '>= 1']),
    (['--batch-sizes', '2', '-1'], ['--batch-sizes', '-1', '>= 1']),
    (['--sizes', '16'], ['--sizes', '16', '>= 32']),
    (['--sizes', '0'], ['--sizes', '0', '>= 32']),
    (['--repeats', '0'], ['--repeats', '0', '>= 1']),
    (['--warmup', '-1'], ['--warmup', '-1', '>= 0']),
    (['--fractions', '1.5'], ['--fractions', '1.5', '[0, 1]']),
    (['--fractions', '-0.25'], ['--fractions', '-0.25', '[0, 1]']),
    (['--fractions', 'nan'], ['--fractions', 'nan', '[0, 1]']),
    (['--threads', '0'], ['--threads', '0', '>= 1']),
    (['--device', 'tpu'], ['--device', 'tpu', 'cpu, cuda or cuda:N']),
    (['--device', 'cpu', '--out-dir', '/proc/speed'], ['--out-dir', '/proc/speed',
                                                         'cannot create']),
])
def test_benchmark_speed_refuses_bad_arguments(argv, expected, capsys):
    tool = load_tool('tools/analysis_tools/benchmark_speed.py')
    err = refused(tool.parse_args, argv, capsys)
    for piece in expected:
        assert piece in err, err


def test_benchmark_speed_runs_on_sizes_that_are_not_multiples_of_32():
    import torch
    tool = load_tool('tools/analysis_tools/benchmark_speed.py')
    threads = torch.get_num_threads()
    try:
        rows = tool.main(['--arch', 'tiny', '--sizes', '100', '--batch-sizes', '1', '2',
                          '--fractions', '0', '0.5', '--repeats', '1', '--warmup', '0',
                          '--device', 'cpu', '--threads', '1'])
    finally:
        torch.set_num_threads(threads)
    # 100 px is padded to 128: 16 regions; a single image is never padded, so no 'padded' row
    assert [(r['batch'], r['kind'], r['fraction']) for r in rows if r['batch'] == 1] == [
        (1, 'dense', 1.0), (1, 'equal', 0.0), (1, 'spread', 0.0), (1, 'gate', 0.0),
        (1, 'equal', 0.5), (1, 'spread', 0.5), (1, 'gate', 0.5)]
    assert {r['kind'] for r in rows if r['batch'] == 2} == {'dense', 'equal', 'spread', 'padded',
                                                           'gate'}
    # ideal MAC ratio > 1 whenever some regions are coarse
    assert all(r['ideal_mac_ratio'] > 1 for r in rows if r['kind'] != 'dense')
