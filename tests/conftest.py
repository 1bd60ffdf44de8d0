import os

# Keep BLAS single-threaded in tests: the suite runs beside Dask workers on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
