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
