#!/usr/bin/env bash
# Create .venv with everything recjobs needs (Airflow, TensorFlow, implicit, LightFM, test tools),
# pinned by requirements.lock. Safe to rerun. Regenerate the lock after changing pyproject.toml:
#   uv pip compile pyproject.toml --extra all --python-version 3.11 \
#       --python-platform x86_64-unknown-linux-gnu -o requirements.lock
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv (fast resolver/installer) with pip" >&2
  "$PYTHON" -m pip install --quiet --disable-pip-version-check uv
fi
UV=$(command -v uv || echo "$PYTHON -m uv")
[ -x .venv/bin/python ] || $UV venv --quiet --python "$PYTHON" .venv
$UV pip install --quiet --python .venv/bin/python -r requirements.lock
$UV pip install --quiet --python .venv/bin/python --no-deps -e .
# Byte-compile once now: where PYTHONDONTWRITEBYTECODE is set (CI images often set it) nothing
# would ever be cached, and every `recjobs` or Airflow task process would compile Airflow,
# pandas and TensorFlow from source again (seconds per process; minutes over the test suite).
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
.venv/bin/python -m compileall -q -j 0 "$SITE" recjobs dags plugins >/dev/null 2>&1 \
  || echo "setup: a few files did not byte-compile (they are compiled when imported)" >&2
echo "setup: .venv ready ($(.venv/bin/python --version))" >&2
