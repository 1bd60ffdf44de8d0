"""The CLI's sequential path and ``verify`` at extreme magnitudes (1e-200 and 1e300 in one
collection): ingest accepts every finite value, the guarantee holds on what is stored, and
``verify`` recomputes errors without under- or overflow."""

from __future__ import annotations

import json

import numpy as np
import pytest

import storage
from flows.cli import main
from pipeline.magnitude import add_scaled_norm2, residual_norm2, scaled_ratio


def _blocks(seed=0, n=60, rows=12, width=2):
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.standard_normal((rows, 2)))[0] for _ in range(3)]
    scales = [1e-200, 1e300, 1.0]
    return np.stack([scales[(i // 5) % 3] * (bases[i % 3] @ rng.standard_normal((2, width))
                                             + 1e-3 * rng.standard_normal((rows, width))) for i in range(n)])


@pytest.mark.slow  # ingest, cluster, compress, report and verify through the CLI
def test_sequential_cluster_compress_verify_at_extreme_magnitudes(capsys, tmp_path):
    blocks = _blocks()
    source = tmp_path / "blocks.npy"
    np.save(source, blocks)
    store = str(tmp_path / "store")
    assert main(["ingest", str(source), "--store", store, "--name", "extreme", "--json"]) == 0
    capsys.readouterr()
    assert main(["cluster", "extreme", "--store", store, "--rank", "3", "--eps", "0.1", "--sequential",
                 "--run-id", "seq", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["guarantee_ok"]
    assert main(["verify", "extreme", "--run-id", "seq", "--store", store, "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] and verified["max_error"] <= 0.1

    coll = storage.open_collection(store, "extreme")
    artifact = storage.open_artifact(store, "extreme", "seq")
    errors = []
    for g in range(artifact.n_groups):
        members = np.flatnonzero(artifact.labels == g)
        residual2, norm2 = (None, 0.0), (None, 0.0)
        for i in members:
            r, n = residual_norm2(coll.block(int(i)), artifact.decompress(int(i)))
            residual2, norm2 = add_scaled_norm2(residual2, r), add_scaled_norm2(norm2, n)
        errors.append(np.sqrt(scaled_ratio(residual2, norm2)))
        assert norm2[1] > 0  # no group decompresses to zeros
    assert max(errors) <= 0.1 * (1 + 1e-6)
    np.testing.assert_allclose(verified["errors"], errors, rtol=1e-6, atol=1e-9)
