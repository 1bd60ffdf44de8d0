"""The ``cmsvd`` command line.

Subcommands: ``ingest``, ``inspect``, ``cluster``, ``compress``, ``decompress``,
``verify``, ``report``, ``study``, ``run`` (the Prefect flow) and ``demo``.

Conventions:

- ``--store`` (or ``CMSVD_STORE``) is the store root: a local folder, ``file://``,
  ``memory://`` or ``s3://bucket/prefix``; default ``./cmsvd-data``.
- ``--json`` prints one JSON document on stdout and nothing else there; progress and
  messages go to stderr.
- Exit codes: 0 ok; 1 a guarantee or verification failure; 2 usage or bad parameters;
  3 missing store, collection, run or artifact; 4 corrupted data or checkpoint;
  5 an unexpected internal error; 130 interrupted.  A user error is one line
  ``error: ...`` on stderr, without a traceback (``CMSVD_DEBUG=1`` shows it).

Heavy imports (numpy, dask, prefect, matplotlib) happen inside the commands, so
``cmsvd --help`` is fast and Prefect settings can be set before Prefect is imported.

Modules: ``_app`` (the Typer app, exit codes, error handling, ``main``), ``_output``
(printing, progress bars, the run summary), ``_store`` (shared options, store and run
helpers), ``_sequential`` (in-memory clustering), and one module per command group:
``data`` (ingest, inspect), ``clustering`` (cluster, compress), ``artifacts``
(decompress, verify), ``reports`` (report, study) and ``flows_cmds`` (run, demo).
Importing them registers their commands, in the order ``cmsvd --help`` lists them.
"""

from __future__ import annotations

from ._app import EXIT_CORRUPT, EXIT_FAILED, EXIT_INTERNAL, EXIT_MISSING, EXIT_OK, EXIT_USAGE, CLIError, _classify, app, main
from ._output import StageBars

# the command modules register their commands on ``app`` when imported; this order is
# the order of ``cmsvd --help``
from . import data, clustering, artifacts, reports, flows_cmds  # noqa: E402,F401,I001  isort: skip
from .flows_cmds import _flow_scheduler

__all__ = ["app", "main", "CLIError", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_MISSING", "EXIT_CORRUPT", "EXIT_INTERNAL",
           "StageBars", "_classify", "_flow_scheduler"]
