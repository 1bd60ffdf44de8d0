"""One place sets Prefect's temporary-server start-up timeout (``flows._prefect_env``), for
``python -m flows``, the ``cmsvd`` command line and the tests (tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

from flows._prefect_env import EPHEMERAL_STARTUP_TIMEOUT_S, configure_prefect_env

NAME = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
ROOT = Path(__file__).resolve().parents[2]


def test_helper_sets_the_timeout_and_leaves_a_chosen_one_alone():
    env = configure_prefect_env({})
    assert env[NAME] == str(EPHEMERAL_STARTUP_TIMEOUT_S) and int(env[NAME]) > 20  # Prefect's default is 20 s
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert configure_prefect_env({NAME: "300"})[NAME] == "300"


def test_the_setting_is_spelled_in_one_module():
    product = [p for d in ("flows", "pipeline", "storage") for p in (ROOT / d).rglob("*.py")]
    spelled = sorted(str(p.relative_to(ROOT)) for p in product if NAME in p.read_text())
    assert spelled == ["flows/_prefect_env.py"]
    for entry_point in ("flows/__main__.py", "flows/cli/flows_cmds.py"):
        assert "configure_prefect_env" in (ROOT / entry_point).read_text(), entry_point


def test_python_m_flows_configures_prefect_before_importing_the_flows(monkeypatch):
    import flows.__main__ as entry

    monkeypatch.delenv(NAME, raising=False)
    seen = {}

    def flows_table():
        seen["timeout"] = os.environ.get(NAME)
        return {"cluster": lambda params: {"ok": True}}

    monkeypatch.setattr(entry, "_flows", flows_table)
    assert entry.main(["cluster", "{}"]) == 0
    assert seen["timeout"] == str(EPHEMERAL_STARTUP_TIMEOUT_S)


def test_the_test_process_runs_prefect_with_the_shared_timeout():
    # tests/conftest.py configures the environment before any test imports Prefect, which
    # reads its settings once
    from prefect.settings import get_current_settings

    assert get_current_settings().server.ephemeral.startup_timeout_seconds == int(os.environ[NAME])
