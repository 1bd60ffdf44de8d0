#!/usr/bin/env bash
# Strong scaling of the scalable clustering (issue 13: 1 GiB of 256 x 64 float32 blocks,
# 2 -> 16 workers) on the device machine, in one prepared call:
#   bash bench/device/fetch_wheels.sh            # here, once
#   run(command="bash bench/device/scaling.sh", carry=["bench/device/wheels"], timeout_s=540)
# Prints the table of bench_scale.py --parts scaling into $OUT/scaling.txt.
set -euo pipefail
# the image's numpy and scipy stay; the rest goes into a target folder (a venv would not see them)
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    bench/device/wheels/*.whl
nproc; PYTHONPATH=/tmp/site python3 -c "import numpy, scipy, dask; print(numpy.__version__, scipy.__version__, dask.__version__)"
export PYTHONPATH="$PWD:/tmp/site"
out=${OUT:-/tmp}
python3 bench/bench_scale.py --parts scaling --io-gib "${IO_GIB:-1}" \
    --scaling-workers ${WORKERS:-2 4 8 16} --root /tmp/cmsvd-scaling 2>"$out/scaling.err" | tee "$out/scaling.txt"
