#!/usr/bin/env bash
# `make gpu-check`: on a GPU machine without the repo's venv (Python + torch + torchvision + nvidia-ml-py
# + rich preinstalled, no package registry). Installs dpprof with --no-deps into a temporary folder, plus
# any cp312 wheels carried in .whl/, then runs benchmarks/gpu_check.py (a few minutes at most).
# GPU_CHECK_OUT=DIR keeps the run directories there; extra arguments go to gpu_check.py.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# build from a copy so the checkout gets no build/ or egg-info litter
mkdir -p "$TMP/src" && cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/dpprof" "$TMP/src/"
if "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target "$TMP/site" "$TMP/src" >"$TMP/pip.log" 2>&1; then
    echo "gpu-check: dpprof installed (--no-deps) into $TMP/site"
    SITE="$TMP/site"
else
    # no pip or no setuptools there: the source tree is importable as it is
    echo "gpu-check: pip install failed ($(tail -1 "$TMP/pip.log")); using the source tree"
    SITE="$REPO"
fi
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index --target "$TMP/site" "$REPO"/.whl/*.whl
    SITE="$SITE:$TMP/site"
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
OUT="${GPU_CHECK_OUT:-$TMP/runs}"
# run from the temporary folder so that the installed copy, not the checkout, is imported
cd "$TMP"
timeout 480 "$PY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" "$@"
