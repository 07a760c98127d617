"""Every repository path that a docstring, a config comment, README.md or docs/ cites exists."""
import glob
import os.path as osp
import re

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# paths into the repository's own top-level folders, e.g. docs/method.md, tools/test.py
CITED = re.compile(r'(?<![\w./-])((?:docs|tools|configs|mmseg_msvit|tests)/[\w./-]*\w)')


def cited_paths():
    files = [osp.join(REPO, 'README.md')]
    for pattern in ('docs/*.md', 'mmseg_msvit/**/*.py', 'tools/**/*.py', 'tools/*.sh',
                    'configs/**/*.py'):
        files += glob.glob(osp.join(REPO, pattern), recursive=True)
    for path in files:
        for match in CITED.finditer(open(path, encoding='utf-8').read()):
            yield osp.relpath(path, REPO), match.group(1)


def test_every_cited_path_exists():
    missing = sorted({(source, cited) for source, cited in cited_paths()
                      if not glob.glob(osp.join(REPO, cited.rstrip('.')))})
    assert not missing, missing


def test_the_project_carries_its_own_docs():
    for name in ('method.md', 'architecture.md'):
        assert osp.getsize(osp.join(REPO, 'docs', name)) > 2000


def test_every_test_the_readme_names_exists():
    """The README's reliability table names the tests that check each guarantee."""
    defined = set()
    for path in glob.glob(osp.join(REPO, 'tests', 'test_*.py')):
        defined |= set(re.findall(r'^def (test_\w+)', open(path, encoding='utf-8').read(),
                                  re.MULTILINE))
    named = set()
    for path in [osp.join(REPO, 'README.md')] + glob.glob(osp.join(REPO, 'docs', '*.md')):
        named |= set(re.findall(r'`(test_\w+)`', open(path, encoding='utf-8').read()))
    assert named and not named - defined, sorted(named - defined)


def test_the_readme_model_zoo_table_is_what_the_tool_measures(capsys):
    """README's model-zoo table is tools/analysis_tools/model_zoo_table.py's output: parameters
    and GMACs are counted, not typed (they were wrong by 2-8% when they were typed)."""
    import sys
    sys.path.insert(0, osp.join(REPO, 'tests'))
    from _helpers import load_tool
    readme = open(osp.join(REPO, 'README.md'), encoding='utf-8').read()
    match = re.search(r'<!-- zoo-table-start -->\n(.*?)\n<!-- zoo-table-end -->', readme, re.S)
    assert match, 'README.md lost its model-zoo table markers'
    measured = load_tool('tools/analysis_tools/model_zoo_table.py').main([])
    assert match.group(1).strip() == measured.strip()
