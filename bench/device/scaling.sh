#!/usr/bin/env bash
# Strong scaling of the scalable clustering (issue 13: 1 GiB of 256 x 64 float32 blocks,
# 2 -> 16 workers) on the device machine, in one prepared call:
#   bash bench/device/fetch_wheels.sh            # here, once
#   run(command="bash bench/device/scaling.sh", carry=["bench/device/wheels"], timeout_s=540)
# Environment: RUNS (below), IO_GIB (default 1), EXTRA (e.g. --profile).
# Prints the table of bench_scale.py --parts scaling into $OUT/scaling.txt.
set -euo pipefail
# the image's numpy and scipy stay; the rest goes into a target folder (a venv would not see them)
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    bench/device/wheels/*.whl
nproc; PYTHONPATH=/tmp/site python3 -c "import numpy, scipy, dask; print(numpy.__version__, scipy.__version__, dask.__version__)"
export PYTHONPATH="$PWD:/tmp/site"
out=${OUT:-/tmp}
# RUNS: "store=workers" entries split by ';', e.g. "/tmp/cmsvd-scaling=2 4 8 16;/dev/shm/cmsvd-scaling=2 16"
# (the local disk, then memory: tells the disk's share of the read floor from the code's)
IFS=';' read -ra runs <<< "${RUNS:-/tmp/cmsvd-scaling=2 4 8 16}"
for entry in "${runs[@]}"; do
    root=${entry%%=*}; workers=${entry#*=}
    mkdir -p "$(dirname "$root")"
    free_kb=$(df --output=avail -k "$(dirname "$root")" | tail -1)
    echo "== store under $root: $(df --output=fstype "$(dirname "$root")" | tail -1), $((free_kb / 1048576)) GiB free"
    if [ "$free_kb" -lt $((4 * 1048576)) ]; then echo "   skipped: under 4 GiB free"; continue; fi
    python3 bench/bench_scale.py --parts scaling --io-gib "${IO_GIB:-1}" --scaling-workers $workers ${EXTRA:-} \
        --root "$root" 2>>"$out/scaling.err"
    rm -rf "$root"
done | tee "$out/scaling.txt"
