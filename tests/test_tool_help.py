"""Every command-line tool documents every option, with its default, in --help."""
import argparse
import glob
import os.path as osp

import pytest
from _helpers import REPO, load_tool

TOOLS = sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'tools', '*.py')) +
               glob.glob(osp.join(REPO, 'tools', '*', '*.py')))


class _Captured(Exception):

    def __init__(self, parser):
        super().__init__('parser captured')
        self.parser = parser


@pytest.mark.parametrize('tool', TOOLS)
def test_every_option_has_help_and_shows_its_default(tool, monkeypatch, capsys):
    module = load_tool(tool)

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', capture)
    with pytest.raises(_Captured) as info:
        module.parse_args([])
    parser = info.value.parser
    assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter, tool
    assert parser.description and not parser.description.rstrip().endswith(('(', ',')), tool
    undocumented = [a.dest for a in parser._actions
                    if not isinstance(a, argparse._HelpAction) and not (a.help or '').strip()]
    assert not undocumented, f'{tool}: options without help: {undocumented}'
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) \
                and not isinstance(action, argparse._HelpAction):
            assert f'(default: {action.default}' in ' '.join(text.split()), (tool, action.dest)


def test_tools_show_only_warnings_that_concern_the_user(tmp_path):
    """The stack's noise (mmengine's pkg_resources import, mmseg's deprecated internal builders,
    its loss-default notice) is not printed by a tool; a warning about the user's own input still
    is."""
    import subprocess
    import sys
    tool = osp.join(REPO, 'tools', 'analysis_tools', 'get_flops.py')
    config = osp.join(REPO, 'configs', 'msvit', 'demo_recipe_synthetic.py')
    run = subprocess.run([sys.executable, tool, config, '--shape', '64', '64'], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '[flops] all fine' in run.stdout
    for noise in ('pkg_resources is deprecated', 'would be deprecated soon', 'avg_non_ignore'):
        assert noise not in run.stderr, (noise, run.stderr[-2000:])
    from mmseg_msvit_startup import quiet_stack_warnings
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        quiet_stack_warnings()
        warnings.warn('pkg_resources is deprecated as an API', UserWarning)
        warnings.warn('your label file has 3 classes', UserWarning)
    assert [str(w.message) for w in caught] == ['your label file has 3 classes']
