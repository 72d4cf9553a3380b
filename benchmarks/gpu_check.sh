#!/usr/bin/env bash
# `make gpu-check`: on a GPU machine without the repo's venv and without a package registry (the H200 image:
# Python 3.12, torch, torchvision, nvidia-ml-py, numpy, matplotlib, jinja2, rich; no msgspec, no python-isal).
# Installs the cp312 wheels carried in .whl/ (`make gpu-wheels`, run where PyPI works) and dpprof itself with
# --no-deps into a temporary folder, then runs benchmarks/gpu_check.py (about 5 minutes; its --budget-s keeps
# it inside, the `timeout` below is the last resort). Output: gpu_check.tar.gz (the run directories, summary,
# provenance, logs), gpu_check.json (the summary) and gpu_check.log (this output) in $OUT when set (the device
# tool brings $OUT back), else traces/gpu-check/. Arguments go to gpu_check.py (--device cpu: the dry run).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DEST="${OUT:-$REPO/traces/gpu-check}"
mkdir -p "$DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
export PYTHONUNBUFFERED=1
export GPU_CHECK_COMMAND="${GPU_CHECK_COMMAND:-bash benchmarks/gpu_check.sh${*:+ $*}}"

install() {
    local site="$TMP/site"
    if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
                "$REPO"/.whl/*.whl >"$TMP/whl.log" 2>&1; then
            echo "gpu-check: carried wheels installed: $(cd "$REPO/.whl" && ls ./*.whl | xargs -n1 basename | tr '\n' ' ')"
        else
            echo "gpu-check: carried wheels not installed ($(tail -1 "$TMP/whl.log")); using what $PY has"
        fi
    else
        echo "gpu-check: no wheels in .whl/ (make gpu-wheels; carry .whl); using what $PY has"
    fi
    # build from a copy so the checkout gets no build/ or egg-info litter
    mkdir -p "$TMP/src" && cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/dpprof" "$TMP/src/"
    if "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --no-compile --target "$site" \
            "$TMP/src" >"$TMP/pip.log" 2>&1; then
        echo "gpu-check: dpprof installed (--no-deps) into $site"
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        # no pip or no setuptools there: the source tree is importable as it is
        echo "gpu-check: pip install of dpprof failed ($(tail -1 "$TMP/pip.log")); using the source tree"
        export PYTHONPATH="$site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # msgspec is required (trace loading, manifests); python-isal is optional (zlib inflates the same, slower)
    "$PY" -c "import msgspec" 2>/dev/null || {
        echo "gpu-check: error: msgspec is not importable: run 'make gpu-wheels' where PyPI works and carry .whl"
        return 2; }
    "$PY" -c "import isal" 2>/dev/null && echo "gpu-check: python-isal present" \
        || echo "gpu-check: python-isal absent: dpprof inflates traces with zlib (slower, same result)"
}

{
    install || exit 2
    # from the temporary folder, so that the installed copy, not the checkout, is imported
    cd "$TMP" && timeout -k 10 "${GPU_CHECK_TIMEOUT_S:-360}" "$PY" "$REPO/benchmarks/gpu_check.py" --dest "$DEST" \
        --work "$TMP/work" "$@"
} 2>&1 | tee "$DEST/gpu_check.log"
