#!/bin/sh
# `make bench-gpu OUT=folder` runs this (or, where make is missing: sh bench/gpu.sh folder [ARGS]).
# On a lent GPU machine the project's own packages are absent: there the wheels that
# `python -m bench.gpu_wheels` downloaded into .whl are installed into a folder of their own
# first (nothing else on the machine changes). Then bench/gpu.py measures, within its 8-minute budget.
set -e
out="${1:?usage: sh bench/gpu.sh OUT_FOLDER [bench.gpu arguments]}"
shift
python="${BENCH_GPU_PYTHON:-python3}"
if ! "$python" -c "import diffusers, msgspec, structlog" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    site="${TMPDIR:-/tmp}/bench-gpu-site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
fi
PYTHONUNBUFFERED=1 exec "$python" -m bench.gpu --out "$out" "$@"
