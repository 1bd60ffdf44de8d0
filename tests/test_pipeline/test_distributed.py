"""The scalable variant on a real distributed LocalCluster (worker processes on 127.0.0.1)."""

import os
import signal
import threading

import numpy as np
import pytest
from distributed import Client, LocalCluster

import pipeline
import storage
from pipeline.distributed import ClusteringRun, cluster_collection
from pipeline.synthetic import union_of_subspaces

from .helpers import awkward_collection, bound_is_valid, exact_error

SMALL_BATCH = 16 * 1024  # bytes: many map tasks even on small collections


@pytest.fixture(scope="module")
def client(dask_cluster):
    """A client of the suite's shared LocalCluster (tests/conftest.py)."""
    with Client(dask_cluster) as c:
        yield c


def _store(tmp_path, blocks, name="c", dtype=None):
    storage.ingest_blocks(str(tmp_path), name, blocks, dtype=dtype)
    return storage.open_collection(str(tmp_path), name)


def _subspace_blocks(n_blocks=600, seed=0):
    layout, _ = union_of_subspaces(n_blocks, rows=24, width=3, blocks_per_subspace=40, subspace_rank=2, noise=0.02, seed=seed)
    return [layout.block(i) for i in range(layout.n_blocks)]


def _check_result(collection, blocks, result, rank, eps):
    flat = sorted(b for g in result.groups for b in g)
    assert flat == list(range(len(blocks)))
    artifact = storage.open_artifact(collection.url, collection.name, result.artifact_label)
    for g, group in enumerate(result.groups):
        exact = exact_error(blocks, group, rank)
        # the certified error is that of the group's basis: at least the exact rank-r error
        # (equal for the Gram route), at most the clustering sketch's bound (Rayleigh-Ritz
        # on the sketch's span captures at least what the sketch does)
        assert exact**2 <= result.errors[g] ** 2 + 1e-10
        if result.bounds[g] > 0.0:
            # (in energy, up to the roundoff of total - head: about k * eps_mach)
            assert result.errors[g] ** 2 <= result.bounds[g] ** 2 * (1 + 1e-9) + 1e-13
        if len(group) > 1:
            assert bound_is_valid(eps, exact), (group, exact)
            assert bound_is_valid(result.bounds[g], exact) or result.bounds[g] == 0.0
        # what is stored meets eps, block by block summed over the group
        residual = sum(np.sum((artifact.decompress(i).astype(np.float64) - blocks[i]) ** 2) for i in group)
        energy = sum(np.sum(np.asarray(blocks[i], dtype=np.float64) ** 2) for i in group)
        stored = np.sqrt(residual / energy) if energy else 0.0
        assert stored <= eps * (1 + 1e-6) + 1e-6
    assert result.max_error <= eps


@pytest.mark.slow  # 600 blocks through every stage with many small map tasks
def test_guarantee_on_structured_collection_with_sharding_and_merges(client, tmp_path):
    blocks = _subspace_blocks()
    coll = _store(tmp_path, blocks)
    stages = []
    result = cluster_collection(
        coll, rank=6, eps=0.1, client=client, shard_size=150, batch_bytes=SMALL_BATCH,
        progress=lambda stage, done, total: stages.append(stage),
    )
    _check_result(coll, blocks, result, 6, 0.1)
    assert result.n_groups < len(blocks) / 10
    assert {"scan", "partition", "local", "certify", "compress"} <= set(stages)
    assert set(result.timings) == {"scan", "partition", "local", "merge", "certify", "compress"}
    assert result.compression_ratio > 2 and result.compression_ratio_adaptive >= result.compression_ratio * 0.99
    assert 0 < result.bytes_compressed < result.bytes_input


@pytest.mark.parametrize(
    "seed,rows,width,rank,eps",
    # the last two: blocks wider than m but within r + p, and single-row blocks
    # (the fast loop keeps those two; the others run with the slow tests)
    [pytest.param(1, 9, 7, 3, 0.3, marks=pytest.mark.slow), (2, 5, 12, 2, 0.5),
     pytest.param(3, 16, 4, 6, 0.05, marks=pytest.mark.slow), pytest.param(4, 4, 6, 3, 0.3, marks=pytest.mark.slow),
     (5, 1, 3, 1, 0.5)],
)
def test_guarantee_on_awkward_collections(client, tmp_path, seed, rows, width, rank, eps):
    blocks = awkward_collection(seed, rows, 40, width)
    blocks = [b.astype(np.float64) for b in blocks]  # one dtype per collection
    coll = _store(tmp_path, blocks)
    result = cluster_collection(coll, rank=rank, eps=eps, client=client, shard_size=12, batch_bytes=512, oversampling=2)
    _check_result(coll, blocks, result, rank, eps)


@pytest.mark.slow  # starts a LocalCluster of its own
def test_float32_collection_and_own_local_cluster(tmp_path):
    blocks = [b.astype(np.float32) for b in _subspace_blocks(120, seed=4)]
    coll = _store(tmp_path, blocks, dtype=np.float32)
    # no client on purpose: the property tested is that cluster_collection starts and
    # stops a LocalCluster of its own
    result = cluster_collection(coll, rank=6, eps=0.1)
    _check_result(coll, blocks, result, 6, 0.1)


@pytest.mark.slow  # starts a one-worker LocalCluster of its own
def test_same_groups_whatever_the_number_of_workers(client, tmp_path):
    coll = _store(tmp_path, _subspace_blocks(seed=5))
    kwargs = dict(rank=6, eps=0.1, shard_size=150, batch_bytes=SMALL_BATCH)
    two = cluster_collection(coll, client=client, run_id="two", **kwargs)
    # a cluster of its own on purpose: one worker against the shared cluster's two
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as one_cluster:
        with Client(one_cluster) as one_client:
            one = cluster_collection(coll, client=one_client, run_id="one", **kwargs)
    assert one.groups == two.groups
    np.testing.assert_array_equal(one.errors, two.errors)


def test_rerun_with_same_run_id_skips_completed_stages(client, tmp_path):
    coll = _store(tmp_path, _subspace_blocks(seed=6))
    kwargs = dict(rank=6, eps=0.1, shard_size=150, batch_bytes=SMALL_BATCH, client=client, run_id="again")
    first = cluster_collection(coll, **kwargs)
    run = storage.open_run(coll.url, coll.name, "again", ClusteringRun(coll, **{**kwargs}).run.params, coll.fingerprint())
    scan_seconds = run.load_stage("scan")[1]["seconds"]
    manifests = {s: os.path.getmtime(os.path.join(run.url, s, "manifest.json")) for s in run.stages()}
    calls = []
    second = cluster_collection(coll, progress=lambda *a: calls.append(a), **kwargs)
    assert second.groups == first.groups
    assert {s: os.path.getmtime(os.path.join(run.url, s, "manifest.json")) for s in run.stages()} == manifests
    assert calls == []  # no map task ran
    assert second.timings["scan"] == scan_seconds
    # rounds that merged nothing store no copy, only the stage that holds their groups
    idle = [s for s in run.stages() if s.startswith("merge-") and "same_as" in run.stage_meta(s)]
    assert idle and all(run.load_stage(s)[0] == {} and run.is_complete(run.stage_meta(s)["same_as"]) for s in idle)
    assert ClusteringRun(coll, **kwargs)._final_groups()[0] == first.groups
    with pytest.raises(ValueError, match="eps"):
        cluster_collection(coll, **{**kwargs, "eps": 0.2})


@pytest.mark.slow  # a LocalCluster per stage, and a worker killed and replaced
@pytest.mark.parametrize("stage", ["scan", "partition", "local", "merge", "certify", "compress"])
def test_killed_worker_does_not_change_the_result(tmp_path, stage):
    coll = _store(tmp_path, _subspace_blocks(seed=7))
    kwargs = dict(rank=6, eps=0.1, shard_size=150, batch_bytes=SMALL_BATCH)
    # a cluster of its own on purpose: this test kills one of its workers, which must not
    # take a worker away from the shared cluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as c:
            reference = cluster_collection(coll, client=c, run_id="reference", **kwargs)
            killed = threading.Event()
            victim = sorted(c.run(os.getpid).values())[0]

            def kill_one_worker(name, done, total):
                if name == stage and not killed.is_set():  # SIGKILL while the stage's tasks run
                    killed.set()
                    os.kill(victim, signal.SIGKILL)

            result = cluster_collection(coll, client=c, run_id="killed", progress=kill_one_worker, **kwargs)
            assert killed.is_set()
    assert result.groups == reference.groups
    np.testing.assert_array_equal(result.errors, reference.errors)


def test_corrupted_block_is_reported_by_name(client, tmp_path):
    blocks = _subspace_blocks(60, seed=8)
    coll = _store(tmp_path, blocks)
    # flip stored values of block 17 behind the collection's back
    import zarr

    group = zarr.open_group(os.path.join(coll.url, coll.name), mode="r+")
    start = int(coll.offsets[17])
    group["data"][:, start] = 1e3
    with pytest.raises(ValueError, match=r"block 17 .*corrupted"):
        cluster_collection(coll, rank=6, eps=0.1, client=client, batch_bytes=SMALL_BATCH)


def test_bad_parameters_fail_before_any_work(client, tmp_path):
    coll = _store(tmp_path, _subspace_blocks(30))
    with pytest.raises(ValueError, match="eps"):
        cluster_collection(coll, rank=4, eps=1.5, client=client)
    with pytest.raises(ValueError, match="shard_size"):
        cluster_collection(coll, rank=4, eps=0.1, client=client, shard_size=1)
    assert not os.path.exists(os.path.join(str(tmp_path), "runs"))


def test_storage_import_survives_a_dask_spill_folder_named_storage(tmp_path, monkeypatch):
    """Dask workers put their local directory, which holds a spill folder called
    ``storage``, first on sys.path; the real package must still be the one imported."""
    import sys

    from pipeline.distributed import _import_storage

    (tmp_path / "storage").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "storage")
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + [p for p in sys.path if p not in ("", os.getcwd())])
    module = _import_storage()
    assert module.__file__ and hasattr(module, "open_run")


def test_a_finished_run_reads_back_without_a_cluster(client, tmp_path):
    coll = _store(tmp_path, _subspace_blocks(80, seed=9))
    done = cluster_collection(coll, rank=6, eps=0.1, client=client, run_id="finished")
    again = ClusteringRun(coll, rank=6, eps=0.1, run_id="finished").result()
    assert again.groups == done.groups and again.timings == done.timings
    with pytest.raises(ValueError, match="Dask cluster"):
        ClusteringRun(coll, rank=6, eps=0.1, run_id="unfinished").scan()


@pytest.mark.slow  # the whole run, to check the guarantee after the orphan round
def test_subspaces_the_sample_missed_get_anchors_of_their_own(client, tmp_path, monkeypatch):
    """A sample too small for the number of subspaces misses some; their blocks (orphans:
    no anchor holds their strongest direction) get anchors from a sample of their own, and
    the guarantee holds."""
    from pipeline.distributed import run as run_module

    monkeypatch.setattr(run_module, "SAMPLE_BLOCKS", 40)
    layout, _ = union_of_subspaces(600, rows=24, width=3, blocks_per_subspace=20, subspace_rank=2, noise=0.01, seed=4)
    blocks = [layout.block(i) for i in range(layout.n_blocks)]
    coll = _store(tmp_path, blocks)
    run = ClusteringRun(coll, rank=6, eps=0.1, client=client, shard_size=100, batch_bytes=4 * SMALL_BATCH)
    orphans = run.partition()["meta"]["orphans"]
    assert orphans[0] >= 30 and len(orphans) >= 2 and orphans[-1] <= orphans[0] // 4, orphans
    _check_result(coll, blocks, run.result(), 6, 0.1)


def test_data_without_subspaces_takes_no_orphan_round(client, tmp_path, monkeypatch):
    """Random columns leave most blocks without an anchor, but anchors from some of them
    hold none of the others: the probe says so and no orphan sample is drawn."""
    from pipeline.distributed import run as run_module

    monkeypatch.setattr(run_module, "SAMPLE_BLOCKS", 40)
    rng = np.random.default_rng(5)
    blocks = [rng.standard_normal((24, 1)) for _ in range(600)]
    coll = _store(tmp_path, blocks)
    run = ClusteringRun(coll, rank=6, eps=0.1, client=client, shard_size=100, batch_bytes=4 * SMALL_BATCH)
    orphans = run.partition()["meta"]["orphans"]
    assert orphans[0] > 300 and len(orphans) == 1, orphans


def test_a_run_of_another_checkpoint_version_is_never_resumed(tmp_path, monkeypatch):
    """A run folder written by a cmsvd whose stages differ is refused by its explicit id,
    and the auto id of the same parameters moves to a fresh folder."""
    from pipeline import params as params_module
    from pipeline.distributed import run as run_module

    coll = _store(tmp_path, _subspace_blocks(40, seed=3))
    spec = params_module.ClusteringParams(rank=6, eps=0.1)
    before, sequential = spec.run_id(coll.fingerprint()), spec.run_id(coll.fingerprint(), "sequential")
    ClusteringRun(coll, rank=6, eps=0.1, run_id="older")  # records the current version
    for module in (params_module, run_module):
        monkeypatch.setattr(module, "CHECKPOINT_VERSION", params_module.CHECKPOINT_VERSION + 1)
    with pytest.raises(storage.RunMismatchError, match="checkpoint_version"):
        ClusteringRun(coll, rank=6, eps=0.1, run_id="older")
    assert spec.run_id(coll.fingerprint()) != before
    assert spec.run_id(coll.fingerprint(), "sequential") == sequential  # the sequential mode has no stages


@pytest.mark.slow  # three drivers, one after the other
def test_concurrent_runs_on_one_run_id_write_one_after_the_other(client, tmp_path):
    """Three drivers on the same run id (a nightly deployment and dashboard runs): the
    run's lease serialises them, each stage is computed once, all return the same groups
    and the one artifact verifies against the data."""
    blocks = _subspace_blocks(200, seed=10)
    coll = _store(tmp_path, blocks)
    kwargs = dict(rank=6, eps=0.1, shard_size=80, batch_bytes=SMALL_BATCH, client=client, run_id="shared")
    results, errors, computed = [], [], []

    def drive(i):
        try:
            progress = lambda stage, done, total: computed.append((i, stage))  # noqa: E731
            results.append(cluster_collection(coll, progress=progress, **kwargs))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r.groups == results[0].groups for r in results)
    for stage in ("scan", "local", "certify", "compress"):  # each computed by one driver only
        assert len({i for i, s in computed if s == stage}) == 1, stage
    _check_result(coll, blocks, results[0], 6, 0.1)


def test_a_run_held_by_another_writer_is_refused_naming_it(client, tmp_path):
    coll = _store(tmp_path, _subspace_blocks(40, seed=11))
    run = ClusteringRun(coll, rank=6, eps=0.1, client=client, run_id="busy", lease_wait_s=0.5)
    with run.run.lease(owner="nightly-deployment"):
        with pytest.raises(storage.RunLeaseError, match="nightly-deployment"):
            ClusteringRun(coll, rank=6, eps=0.1, client=client, run_id="busy", lease_wait_s=0.5).scan()


@pytest.mark.slow  # 240 blocks in up to three magnitude bands, every stage
@pytest.mark.parametrize("dtype,scales,bands", [
    (np.float64, [1e-200, 1.0, 1e300, 2.0**-1040], 3),  # 1e-200 and 2^-1040 share a band
    (np.float32, [1e-30, 1.0, 1e30, 1e-35], 1),
])
def test_guarantee_at_extreme_magnitudes(client, tmp_path, dtype, scales, bands):
    """Blocks near 1e-200, 1e300 and in the subnormal range beside ordinary ones (float32:
    1e-30 .. 1e30): squared norms used to under- or overflow, so different subspaces
    certified at error 0."""
    from pipeline.magnitude import add_scaled_norm2, residual_norm2, scaled_ratio

    plain = _subspace_blocks(240, seed=8)
    blocks = [(b * scales[(i // 7) % 4]).astype(dtype) for i, b in enumerate(plain)]
    coll = _store(tmp_path, blocks, dtype=dtype)
    assert np.all(np.isfinite(coll.norms2)) and np.all(coll.norms2 > 0)
    coll.verify()
    result = cluster_collection(coll, rank=6, eps=0.1, client=client, shard_size=80, batch_bytes=SMALL_BATCH)
    reference = cluster_collection(_store(tmp_path, plain, name="plain"), rank=6, eps=0.1, client=client,
                                   shard_size=80, batch_bytes=SMALL_BATCH)
    artifact = storage.open_artifact(coll.url, coll.name, result.artifact_label)
    shifts = pipeline.as_layout(blocks).block_shifts()
    assert len(set(shifts.tolist())) == bands
    for group in result.groups:
        assert len(set(shifts[group].tolist())) == 1  # one magnitude band per group
        assert exact_error(blocks, group, 6) <= 0.1 * (1 + 1e-9)
        residual2, norm2 = (None, 0.0), (None, 0.0)
        for i in group:
            r, n = residual_norm2(blocks[i], artifact.decompress(i))
            residual2, norm2 = add_scaled_norm2(residual2, r), add_scaled_norm2(norm2, n)
        assert np.sqrt(scaled_ratio(residual2, norm2)) <= 0.1 * (1 + 1e-6) + (1e-6 if dtype == np.float64 else 1e-3)
    assert result.max_error <= 0.1
    # four bands cannot merge what one band merges, but nothing collapses either
    assert reference.n_groups <= result.n_groups <= 4 * reference.n_groups


def test_certifying_in_waves_gives_the_same_bits(client, tmp_path, monkeypatch):
    import pipeline.distributed.finish as finish

    coll = _store(tmp_path, _subspace_blocks(200, seed=3))
    kwargs = dict(rank=2, eps=0.1, shard_size=100, batch_bytes=SMALL_BATCH)
    # every group through the Gram route, the one that goes in waves
    monkeypatch.setattr(finish.CertifyAndCompress, "_certify_projected", lambda self, groups, refs: [None] * len(groups))
    whole = cluster_collection(coll, client=client, run_id="one-wave", **kwargs)
    waves, original = [], finish.CertifyAndCompress._summed_pass

    def counted(self, kind, groups, *args):
        waves.append(len(groups))
        return original(self, kind, groups, *args)

    monkeypatch.setattr(finish.CertifyAndCompress, "_summed_pass", counted)
    monkeypatch.setattr(finish, "CERTIFY_WAVE_BYTES", 24 * 24 * 8)  # one group's Gram per wave
    waved = cluster_collection(coll, client=client, run_id="waves", **kwargs)
    assert whole.n_groups >= 3 and len(waves) >= whole.n_groups and max(waves) == 1
    assert waved.groups == whole.groups
    np.testing.assert_array_equal(waved.errors, whole.errors)
    np.testing.assert_array_equal(waved.stored_errors, whole.stored_errors)


def test_ritz_route_certifies_what_the_gram_route_does(client, tmp_path, monkeypatch):
    import pipeline.distributed.finish as finish

    blocks = _subspace_blocks(300, seed=5)
    coll = _store(tmp_path, blocks)
    kwargs = dict(rank=3, eps=0.08, shard_size=100, batch_bytes=SMALL_BATCH)
    kinds, original = [], finish.CertifyAndCompress._summed_pass

    def counted(self, kind, groups, *args):
        kinds.append(kind)
        return original(self, kind, groups, *args)

    monkeypatch.setattr(finish.CertifyAndCompress, "_summed_pass", counted)
    ritz = cluster_collection(coll, client=client, run_id="ritz", **kwargs)
    assert kinds == ["ritz"]  # every group certified on its sketch: no Gram read
    monkeypatch.setattr(finish.CertifyAndCompress, "_certify_projected", lambda self, groups, refs: [None] * len(groups))
    gram = cluster_collection(coll, client=client, run_id="gram", **kwargs)
    assert ritz.groups == gram.groups
    # the Gram route's error is the exact one: the Ritz error is at least that, never above eps
    assert np.all(ritz.errors**2 >= gram.errors**2 - 1e-12)
    assert ritz.max_error <= 0.08
    # span(Q) holds the top subspace of these groups: the same adaptive ranks
    np.testing.assert_array_equal(ritz.ranks, gram.ranks)
    _check_result(coll, blocks, ritz, 3, 0.08)


def test_refill_pools_the_groups_shards_cut_short(client, tmp_path, monkeypatch):
    from pipeline.distributed.run import ClusteringRun

    blocks = _subspace_blocks(400, seed=7)
    coll = _store(tmp_path, blocks)
    kwargs = dict(rank=6, eps=0.1, shard_size=40, batch_bytes=SMALL_BATCH)  # ten shards: ten cut groups
    refilled = cluster_collection(coll, client=client, run_id="refill", **kwargs)
    monkeypatch.setattr(ClusteringRun, "_refill", lambda self, futures: (self._gather("local", futures), []))
    plain = cluster_collection(coll, client=client, run_id="plain", **kwargs)
    local = {run: ClusteringRun(coll, client=None, run_id=run, **kwargs).local()["meta"] for run in ("refill", "plain")}
    assert sum(local["refill"]["refilled"]) > 0
    # pooled, the cut groups fill whole ones: fewer groups out of the local stage, and
    # never more at the end
    assert local["refill"]["n_groups"] < local["plain"]["n_groups"]
    assert refilled.n_groups <= plain.n_groups
    _check_result(coll, blocks, refilled, 6, 0.1)


def test_refill_does_not_depend_on_the_order_shards_finish(client, tmp_path, monkeypatch):
    import distributed

    coll = _store(tmp_path, _subspace_blocks(400, seed=7))
    kwargs = dict(rank=6, eps=0.1, shard_size=40, batch_bytes=SMALL_BATCH, client=client)
    forward = ClusteringRun(coll, run_id="forward", **kwargs)
    forward_local = forward.local()

    def last_shard_first(futures):  # every local task done, reported last shard first
        distributed.wait(futures)
        return iter(list(futures)[::-1])

    monkeypatch.setattr(distributed, "as_completed", last_shard_first)
    backward = ClusteringRun(coll, run_id="backward", **kwargs)
    backward_local = backward.local()
    assert sum(forward_local["meta"]["refilled"]) > 0
    assert backward_local["meta"]["refilled"] == forward_local["meta"]["refilled"]
    assert backward._groups_after(-1)[0] == forward._groups_after(-1)[0]


@pytest.mark.parametrize("dtype, eps", [(np.float32, 0.2), (np.float64, 0.2), (np.float64, 1e-5)])
def test_the_sample_read_from_the_blocks_is_the_scans_bit_for_bit(client, tmp_path, dtype, eps):
    # blocks no wider than their factors: the sample greedy starts before the scan, from the
    # stored blocks; what it reads must be the scan checkpoint's factors and norms exactly
    from pipeline.distributed import tasks

    blocks = [(b * 10.0 ** (i % 7 - 3)).astype(dtype) for i, b in enumerate(_subspace_blocks(300, seed=3))]  # bands
    coll = _store(tmp_path, blocks, dtype=dtype)
    run = ClusteringRun(coll, rank=6, eps=eps, client=client, shard_size=100, batch_bytes=SMALL_BATCH)
    assert run._sample_reads_blocks()
    run.scan()
    params = dict(run.params)
    for batch, picked in run._sample_picks():
        first = int(run._batch_bounds[batch])
        raw = tasks.sample_part_raw(run._handle, params, first, picked)
        scanned = tasks.sample_part(run._handle, params, batch, first, picked)
        for a, b in zip(raw, scanned):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    wide = _store(tmp_path, [np.hstack([b, b, b]) for b in blocks[:50]], name="wide")
    assert not ClusteringRun(wide, rank=2, eps=eps, client=client, oversampling=1)._sample_reads_blocks()
