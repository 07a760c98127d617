#!/usr/bin/env bash
# Create the project's virtual environment (./.venv by default) and install the locked stack:
# requirements/lock.txt holds every package at its exact version (Linux x86_64, CPython 3.11);
# elsewhere the direct requirements (torch.txt, runtime.txt, tests.txt) are installed instead,
# with a warning. Idempotent: a stamp holding the hash of the requirement files and setup.py
# makes a re-run return at once when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
files="requirements/torch.txt requirements/runtime.txt requirements/tests.txt requirements/lock.txt setup.py"
want=$(cat $files | sha256sum | cut -d' ' -f1)
stamp="$VENV/.mmseg_msvit-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
start=$(date +%s)
echo "[setup] creating/updating $VENV with the pinned stack (first time: a few minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip's local-index warnings on this machine are noise; errors still stop the script (pipefail).
pip_quiet() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
where=$("$VENV/bin/python" -c 'import platform, sys; print(platform.system(), platform.machine(), "%d.%d" % sys.version_info[:2])')
if [ "$where" = "Linux x86_64 3.11" ]; then
  pip_quiet install --quiet -r requirements/lock.txt
else
  echo "[setup] warning: requirements/lock.txt is for Linux x86_64 + CPython 3.11, this is $where;"
  echo "[setup]          installing the direct requirements instead (versions may differ from the tested ones)"
  pip_quiet install --quiet -r requirements/torch.txt -r requirements/runtime.txt -r requirements/tests.txt
fi
pip_quiet install --quiet --no-deps --no-build-isolation -e .
# `import mmseg.apis` before `import mmseg_msvit` works with mmcv-lite (mmseg_msvit_startup.py)
"$VENV/bin/python" -m mmseg_msvit_startup
"$VENV/bin/python" -c "import mmseg_msvit, mmseg.models, mmpretrain.models; print('[setup] import check ok: mmseg_msvit', mmseg_msvit.__version__)"
echo "$want" > "$stamp"
echo "[setup] done in $(( $(date +%s) - start )) s"
