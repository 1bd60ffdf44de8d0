#!/usr/bin/env bash
# Wheels for the 16-core device machine (Python 3.12, numpy and scipy preinstalled, no
# network there): the project's runtime dependencies at the versions of this checkout's
# environment. Run here, before `run` with carry ["bench/device/wheels"].
set -euo pipefail
cd "$(dirname "$0")"
py=${PYTHON:-../../.venv/bin/python}
pins=$("$py" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in ("dask", "distributed", "zarr", "numcodecs", "fsspec", "threadpoolctl")))
PY
)
rm -rf wheels && mkdir wheels
"$py" -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any -d wheels $pins google-crc32c crc32c
rm -f wheels/numpy-* wheels/scipy-*  # the device has them; they would take half the carry budget
du -sh wheels
