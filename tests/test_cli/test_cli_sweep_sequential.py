"""``report --sweep`` on a sequential run is refused the same way whether or not
report.json exists yet (it used to be ignored silently in one case and refused in the
other)."""

import json

import numpy as np

from flows.cli import EXIT_USAGE, main


def test_sweep_on_a_sequential_run_is_refused_before_and_after_the_report(capsys, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "b.npy", rng.standard_normal((12, 8, 2)))
    store = str(tmp_path / "store")
    assert main(["ingest", str(tmp_path / "b.npy"), "--store", store, "--name", "c", "--json"]) == 0
    assert main(["cluster", "c", "--store", store, "--rank", "2", "--eps", "0.5", "--sequential", "--run-id", "s",
                 "--no-html", "--json"]) == 0
    report_json = tmp_path / "store" / "runs" / "c" / "s" / "report.json"
    report_json.unlink()  # as after a cluster run that wrote no report
    capsys.readouterr()
    sweep = ["report", "c", "--run-id", "s", "--store", store, "--sweep", "0.2,0.3"]
    assert main(sweep) == EXIT_USAGE  # without report.json
    assert "--sweep needs a distributed run" in capsys.readouterr().err
    assert not report_json.exists()  # refused before anything is written
    assert main(["report", "c", "--run-id", "s", "--store", store, "--json"]) == 0  # writes report.json
    assert json.loads(capsys.readouterr().out) == json.loads(report_json.read_text())  # and prints it
    assert main(sweep) == EXIT_USAGE  # with it
    assert "--sweep needs a distributed run" in capsys.readouterr().err
