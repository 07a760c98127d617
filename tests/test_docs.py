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
