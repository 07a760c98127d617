#!/usr/bin/env bash
# Create the project's virtual environment (./.venv by default) and install the pinned stack.
# Idempotent: a stamp holding the hash of the requirement files and setup.py makes a re-run
# return at once when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
files="requirements/torch.txt requirements/runtime.txt requirements/tests.txt setup.py"
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
pip_quiet install --quiet -r requirements/torch.txt -r requirements/runtime.txt -r requirements/tests.txt
pip_quiet install --quiet --no-deps --no-build-isolation -e .
# `import mmseg.apis` before `import mmseg_msvit` works with mmcv-lite (mmseg_msvit_startup.py)
"$VENV/bin/python" -m mmseg_msvit_startup
"$VENV/bin/python" -c "import mmseg_msvit, mmseg.models, mmpretrain.models; print('[setup] import check ok: mmseg_msvit', mmseg_msvit.__version__)"
echo "$want" > "$stamp"
echo "[setup] done in $(( $(date +%s) - start )) s"
