"""Helpers of the CLI tests: ``cmsvd`` run in-process (``flows.cli.main``) with its output
captured (imported by the test modules; the name is unique because test folders have no
``__init__.py``)."""

from __future__ import annotations

import json
from typing import Any

from flows.cli import main


def cli(capsys, *args: Any) -> tuple[int, str, str]:
    """``cmsvd ARGS...``: exit code, stdout and stderr of this call alone."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *args: Any) -> Any:
    """``cmsvd ARGS... --json``, which must succeed: stdout holds exactly one JSON document."""
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)
