#!/usr/bin/env bash
# `make gpu-check`: on a GPU machine without the repo's venv (Python + torch + torchvision + nvidia-ml-py
# + rich preinstalled, no package registry). Installs dpprof with --no-deps into a temporary folder, plus
# any cp312 wheels carried in .whl/, then runs benchmarks/gpu_check.py and benchmarks/overhead.py (the
# collection overhead A/B ratios with CUDA-event step times and the real NVML). Estimated total on an H100:
# gpu_check.py ~2-3 min (4-6 short runs, torchrun start-up for DDP), overhead.py ~1 min (CUDA/cuDNN warm-up,
# 3 comparisons x 6 pairs x 2 blocks x 5 steps of VGG16 batch 128, 6 trace exports); capped at 8 + 4 min.
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
status=0
timeout 480 "$PY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" "$@" || status=$?
# overhead.py puts the checkout first on sys.path itself (same sources as the installed copy); it runs even
# when a check above failed; the exit status is the checks' own, else overhead.py's.
echo "gpu-check: collection overhead (benchmarks/overhead.py, A/B block pairs)"
timeout 240 "$PY" "$REPO/benchmarks/overhead.py" --model vgg16 --batch 128 --pairs 6 || {
    rc=$?; echo "gpu-check: overhead.py exited $rc"; [ "$status" -ne 0 ] || status=$rc; }
exit "$status"
