"""Run a flow locally, without a deployment: ``python -m flows <flow> '<json params>'``.

Flows: cluster, compress, report, ingest, demo-data.  Parameters are the fields of the
flow's pydantic model (see ``flows/params.py``), as JSON or ``@file.json``.  Without
``PREFECT_API_URL`` Prefect runs the flow against a temporary local API (its start-up
timeout is raised as for the ``cmsvd`` command line, see ``flows/_prefect_env.py``).

Example::

    python -m flows cluster '{"store_url": "./cmsvd-data", "collection": "demo", "eps": 0.1}'
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._prefect_env import configure_prefect_env


def _flows() -> dict:
    from .cluster import cluster, compress
    from .ingest import demo_data, ingest
    from .report import report

    return {"cluster": cluster, "compress": compress, "report": report, "ingest": ingest, "demo-data": demo_data}


def main(argv: list[str] | None = None) -> int:
    """Parse ``<flow> <params>`` and run the flow; print its summary as JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = "cluster, compress, report, ingest, demo-data"
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    name, raw = argv
    configure_prefect_env()  # before the flows import Prefect, which reads its settings once
    flows = _flows()
    if name not in flows:
        print(f"unknown flow {name!r}; one of {names}", file=sys.stderr)
        return 2
    text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
    summary = flows[name](params=json.loads(text))
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
