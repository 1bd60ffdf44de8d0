"""Incremental runs (pipeline.distributed.update) on the suite's real LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import Client

import storage
from pipeline.distributed import ClusteringRun, cluster_collection
from pipeline.distributed.update import UpdateRun

from .helpers import exact_error

RANK, EPS = 4, 0.1
KW = dict(rank=RANK, eps=EPS, shard_size=100, batch_bytes=8 * 1024)


@pytest.fixture(scope="module")
def client(dask_cluster):
    with Client(dask_cluster) as c:
        yield c


def _blocks(rng, bases, n, noise=0.01):
    out = []
    for _ in range(n):
        u = bases[rng.integers(len(bases))]
        b = u @ rng.standard_normal((u.shape[1], 3))
        out.append(b + noise * np.linalg.norm(b) / np.sqrt(b.size) * rng.standard_normal(b.shape))
    return out


def _subspaces(rng, n, rows=24, dim=2):
    return [np.linalg.qr(rng.standard_normal((rows, dim)))[0] for _ in range(n)]


@pytest.fixture
def grown(tmp_path, client):
    """A collection of 300 blocks from 6 subspaces with a finished full run, then 60
    blocks appended: 30 from the same subspaces, 20 from 2 new ones, 10 of noise."""
    rng = np.random.default_rng(7)
    old = _subspaces(rng, 6)
    blocks = _blocks(rng, old, 300)
    coll = storage.ingest_blocks(str(tmp_path), "c", blocks)
    full = cluster_collection(coll, client=client, run_id="full", **KW)
    more = _blocks(rng, old, 30) + _blocks(rng, _subspaces(rng, 2), 20) + [rng.standard_normal((24, 3)) for _ in range(10)]
    coll = storage.ingest_blocks(str(tmp_path), "c", more, append=True)
    return coll, blocks + more, full


def _check_guarantee(coll, blocks, result):
    assert sorted(b for g in result.groups for b in g) == list(range(len(blocks)))
    artifact = storage.open_artifact(coll.url, coll.name, result.artifact_label, verify=True)
    for g, group in enumerate(result.groups):
        exact = exact_error(blocks, group, RANK)
        assert exact <= EPS * (1 + 1e-9), (g, exact)
        assert exact <= result.errors[g] * (1 + 1e-9) + 1e-12  # errors: exact, or the stored error above it
        residual = sum(np.sum((artifact.decompress(i) - blocks[i]) ** 2) for i in group)
        energy = sum(np.sum(blocks[i] ** 2) for i in group)
        stored = np.sqrt(residual / energy)
        assert stored <= EPS * (1 + 1e-9)
        assert abs(stored - result.stored_errors[g]) <= 1e-9
    return artifact


def test_an_update_keeps_the_guarantee_for_blocks_that_fit_form_groups_or_fit_nothing(client, grown):
    coll, blocks, full = grown
    parent = storage.open_artifact(coll.url, coll.name, full.artifact_label)
    before = dict(parent.manifest)
    result = cluster_collection(coll, client=client, parent_run_id="full", **KW)
    lineage = result.lineage
    assert lineage["parent_run"] == "full" and lineage["root_run"] == "full" and lineage["depth"] == 1
    assert lineage["blocks_added"] == 60 and 25 <= lineage["absorbed"] < 60 and lineage["new_groups"] >= 2
    assert lineage["groups_touched"] >= 1
    artifact = _check_guarantee(coll, blocks, result)
    # untouched groups are read from the parent's artifact, which is unchanged
    assert artifact.base is not None and artifact.base.label == full.artifact_label
    assert storage.open_artifact(coll.url, coll.name, full.artifact_label).manifest == before
    for g, group in enumerate(full.groups):
        assert result.groups[g][: len(group)] == group  # parent groups keep their members first


def test_an_update_is_deterministic_resumes_and_chains(client, grown, tmp_path):
    coll, blocks, full = grown
    first = cluster_collection(coll, client=client, parent_run_id="full", run_id="u1", **KW)
    again = cluster_collection(coll, client=client, parent_run_id="full", run_id="u2", **KW)
    assert again.groups == first.groups
    np.testing.assert_array_equal(again.stored_errors, first.stored_errors)
    # a run stopped after some stages resumes from its checkpoints to the same result
    stopped = UpdateRun(coll, parent_run_id="full", client=client, run_id="u3")
    stopped.absorb()
    stopped.local()
    resumed = UpdateRun(coll, parent_run_id="full", client=client, run_id="u3").result()
    assert resumed.groups == first.groups
    # an update of an update: a delta of a delta
    rng = np.random.default_rng(11)
    extra = _blocks(rng, _subspaces(rng, 1), 15)
    coll = storage.ingest_blocks(coll.url, "c", extra, append=True)
    second = cluster_collection(coll, client=client, parent_run_id="u1", **KW)
    assert second.lineage["depth"] == 2 and second.lineage["root_run"] == "full"
    artifact = _check_guarantee(coll, blocks + extra, second)
    assert artifact.base.label == "u1" and artifact.base.base.label == full.artifact_label


def test_an_update_refuses_what_it_cannot_update(client, grown):
    coll, _, _ = grown
    with pytest.raises(ValueError, match="other parameters \\(eps\\)"):
        cluster_collection(coll, client=client, parent_run_id="full", **{**KW, "eps": 0.2})
    with pytest.raises(storage.RunNotFoundError):
        cluster_collection(coll, client=client, parent_run_id="missing", **KW)
    ClusteringRun(coll, client=client, run_id="unfinished", **KW).certify()
    with pytest.raises(ValueError, match="has not finished"):
        cluster_collection(coll, client=client, parent_run_id="unfinished", **KW)
    done = cluster_collection(coll, client=client, run_id="now", **KW)
    with pytest.raises(ValueError, match="nothing to update"):
        cluster_collection(coll, client=client, parent_run_id=done.run_id, **KW)


@pytest.mark.slow  # a LocalCluster of its own, and a worker killed and replaced
@pytest.mark.parametrize("stage", ["absorb", "compress"])
def test_a_worker_killed_during_an_update_does_not_change_it(tmp_path, stage):
    import os
    import signal
    import threading

    from distributed import LocalCluster

    rng = np.random.default_rng(3)
    old = _subspaces(rng, 4)
    coll = storage.ingest_blocks(str(tmp_path), "c", _blocks(rng, old, 200))
    # a cluster of its own on purpose: a worker of it is killed
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as c:
        cluster_collection(coll, client=c, run_id="full", **KW)
        coll = storage.ingest_blocks(str(tmp_path), "c", _blocks(rng, old, 30) + _blocks(rng, _subspaces(rng, 1), 10),
                                     append=True)
        reference = cluster_collection(coll, client=c, parent_run_id="full", run_id="reference", **KW)
        killed = threading.Event()
        victim = sorted(c.run(os.getpid).values())[0]

        def kill_one_worker(name, done, total):
            if name == stage and not killed.is_set():
                killed.set()
                os.kill(victim, signal.SIGKILL)

        result = cluster_collection(coll, client=c, parent_run_id="full", run_id="killed", progress=kill_one_worker,
                                    **KW)
        assert killed.is_set()
    assert result.groups == reference.groups
    np.testing.assert_array_equal(result.stored_errors, reference.stored_errors)


def test_a_drifted_update_is_replaced_by_a_full_run_that_says_why(client, grown, monkeypatch):
    import pipeline.distributed.update as update

    coll, blocks, _ = grown
    monkeypatch.setattr(update, "DRIFT_FLOOR", 2.0)  # no update can reach twice the estimate
    result = cluster_collection(coll, client=client, parent_run_id="full", **KW)
    lineage = result.lineage
    assert "estimated to reach" in lineage["full_reason"] and lineage["parent_run"] == "full"
    assert lineage["replaced_update"].startswith("update-") and result.run_id != lineage["replaced_update"]
    artifact = _check_guarantee(coll, blocks, result)
    assert artifact.base is None  # a whole artifact, not a delta


def test_appended_blocks_of_extreme_magnitude_form_groups_of_their_own_band(client, tmp_path):
    rng = np.random.default_rng(5)
    old = _subspaces(rng, 3)
    coll = storage.ingest_blocks(str(tmp_path), "c", _blocks(rng, old, 120))
    cluster_collection(coll, client=client, run_id="full", **KW)
    tiny = [b * 1e-200 for b in _blocks(rng, old, 6)]  # the same subspaces, far below the parent's band
    huge = [b * 1e200 for b in _blocks(rng, old, 6)]
    coll = storage.ingest_blocks(str(tmp_path), "c", tiny + huge + _blocks(rng, old, 6), append=True)
    result = cluster_collection(coll, client=client, parent_run_id="full", **KW)
    assert result.lineage["absorbed"] >= 6  # the ordinary ones fit their groups
    for g in result.groups:  # no group mixes magnitude bands
        scales = {round(np.log10(np.abs(coll.block(i)).max()) / 100) for i in g}
        assert len(scales) == 1, g
    assert result.max_error <= EPS
    for g, group in enumerate(result.groups):
        blocks = {i: coll.block(i) for i in group}
        assert exact_error(blocks, group, RANK) <= EPS * (1 + 1e-9)


def test_raw_parent_groups_with_near_copies_appended_are_regrouped_with_them(client, tmp_path):
    """A model and a later checkpoint of it: blocks the parent stored raw (no group fits
    them) get a near copy appended; the update groups each with its copy, as a full run
    would, dropping the raw parent groups; the rest of the parent is read, not copied."""
    rng = np.random.default_rng(9)
    lone = [rng.standard_normal((24, 3)) for _ in range(30)]  # fit nothing: stored raw
    blocks = _blocks(rng, _subspaces(rng, 3), 90) + lone
    coll = storage.ingest_blocks(str(tmp_path), "c", blocks)
    full = cluster_collection(coll, client=client, run_id="full", **KW)
    raw = [h for h, rank in enumerate(storage.open_artifact(coll.url, "c", full.artifact_label).ranks) if rank == 0]
    assert len(raw) >= 5  # alone or a few together
    copies = [b + 0.003 * rng.standard_normal(b.shape) for b in lone[:12]]
    coll = storage.ingest_blocks(str(tmp_path), "c", copies, append=True)
    result = cluster_collection(coll, client=client, parent_run_id="full", **KW)
    assert result.lineage["raw_regrouped"] >= 6
    artifact = _check_guarantee(coll, blocks + copies, result)
    label = {b: g for g, members in enumerate(result.groups) for b in members}
    together = sum(label[90 + k] == label[120 + k] for k in range(12))
    assert together >= 6  # originals and their copies share groups
    assert artifact.base.label == full.artifact_label
    regrouped = cluster_collection(coll, client=client, run_id="again", **KW)
    assert result.compression_ratio >= 0.97 * regrouped.compression_ratio
