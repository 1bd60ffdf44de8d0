"""One writer per run: N concurrent writers on one run id, exactly one holds the lease at
a time; waiting is bounded and the refusal names the run and the owner; an expired lease
is taken over and its old holder can no longer commit."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid

import numpy as np
import pytest

from storage import LeaseLostError, RunLeaseError, open_run, run_lease


def _writer(url: str, log: str, rounds: int, opts: dict | None, name: str) -> None:
    for _ in range(rounds):
        with run_lease(url, "c", "r1", owner=name, ttl_s=5.0, wait_s=60.0, poll_s=0.01, storage_options=opts):
            with open(log, "a") as f:
                f.write(f"enter {name} {time.time():.6f}\n")
            time.sleep(0.02)
            with open(log, "a") as f:
                f.write(f"exit {name} {time.time():.6f}\n")


def _assert_exclusive(log: str, writers: int, rounds: int) -> None:
    lines = open(log).read().split()
    events = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 3)]
    assert len(events) == 2 * writers * rounds
    inside = None
    for kind, who in events:  # appends are ordered: enter/exit must alternate, same writer
        if kind == "enter":
            assert inside is None, f"{who} entered while {inside} held the lease"
            inside = who
        else:
            assert inside == who
            inside = None


@pytest.mark.slow  # spawns writer processes
def test_concurrent_processes_local(tmp_path):
    url, log = str(tmp_path / "store"), str(tmp_path / "log")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(url, log, 3, None, f"p{i}")) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    _assert_exclusive(log, 4, 3)


def _threads_write(url: str, log: str, n_threads: int, rounds: int, opts: dict | None, timeout: float) -> None:
    """*n_threads* threads of :func:`_writer` against one run; then check they took turns."""
    threads = [threading.Thread(target=_writer, args=(url, log, rounds, opts, f"t{i}")) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    _assert_exclusive(log, n_threads, rounds)


def test_concurrent_threads_memory(tmp_path, mem_root):
    _threads_write(mem_root, str(tmp_path / "log"), 5, 3, None, timeout=120)


def test_second_writer_is_refused_naming_the_owner(root):
    with run_lease(root, "c", "r1", owner="alice@host:12"):
        t0 = time.monotonic()
        with pytest.raises(RunLeaseError, match=r"run 'r1' of collection 'c' is being written by 'alice@host:12'"):
            run_lease(root, "c", "r1", owner="bob", wait_s=0.3, poll_s=0.05).acquire()
        assert 0.25 < time.monotonic() - t0 < 5  # waited, boundedly
    with run_lease(root, "c", "r1", owner="bob") as lease:  # released: free again
        assert lease.held


def test_expired_lease_is_taken_over_and_the_old_holder_cannot_commit(root, rng):
    run_a = open_run(root, "c", "r1", {"p": 1}, "fp")
    lease_a = run_a.lease(owner="a", ttl_s=0.3)
    lease_a._heartbeat = False  # a holder that stopped renewing (frozen or dead)
    lease_a.acquire()
    run_a.save_stage("scan", {"x": np.ones(2)})
    time.sleep(0.4)
    run_b = open_run(root, "c", "r1", {"p": 1}, "fp")
    with run_b.lease(owner="b", ttl_s=30, wait_s=2):
        with pytest.raises(LeaseLostError, match="now held by 'b'"):
            lease_a.renew()
        with pytest.raises(LeaseLostError):
            run_a.save_stage("scan", {"x": np.zeros(2)})
        run_b.save_stage("scan", {"x": np.full(2, 7.0)})
    np.testing.assert_array_equal(run_b.load_stage("scan")[0]["x"], 7.0)
    lease_a.release()  # not ours any more: leaves others alone


def test_heartbeat_keeps_a_short_lease_alive(root):
    with run_lease(root, "c", "r1", owner="a", ttl_s=0.3) as lease:
        time.sleep(1.0)  # three ttl: only the heartbeat keeps it
        with pytest.raises(RunLeaseError):
            run_lease(root, "c", "r1", owner="b").acquire()
        lease.check()


def test_readers_never_need_the_lease(root, rng):
    run = open_run(root, "c", "r1", {"p": 1}, "fp")
    run.save_stage("scan", {"x": np.ones(3)})
    with run_lease(root, "c", "r1", owner="writer"):
        reader = open_run(root, "c", "r1", {"p": 1}, "fp")
        assert reader.is_complete("scan") and reader.load_stage("scan")[0]["x"].sum() == 3


s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
from test_s3 import s3_endpoint  # noqa: E402,F401


def test_concurrent_threads_s3(tmp_path, s3_endpoint):  # noqa: F811
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    bucket = f"cmsvd-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    _threads_write(f"s3://{bucket}/store", str(tmp_path / "log"), 4, 2, opts, timeout=180)


def test_s3_takeover_is_conditional(s3_endpoint):  # noqa: F811
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    bucket = f"cmsvd-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    url = f"s3://{bucket}/store"
    a = run_lease(url, "c", "r1", owner="a", ttl_s=0.3, storage_options=opts)
    a._heartbeat = False
    a.acquire()
    time.sleep(0.4)
    with run_lease(url, "c", "r1", owner="b", wait_s=5, storage_options=opts):
        with pytest.raises(LeaseLostError):
            a.renew()
        with pytest.raises(RunLeaseError, match="'b'"):
            run_lease(url, "c", "r1", owner="c", storage_options=opts).acquire()
    with run_lease(url, "c", "r1", owner="c", storage_options=opts) as c:  # released by b
        assert c.held


def test_worker_commits_only_while_the_driver_holds_the_lease(root):
    driver = run_lease(root, "c", "r1", owner="driver", ttl_s=0.3)
    driver._heartbeat = False
    driver.acquire()
    worker_run = open_run(root, "c", "r1", {"p": 1}, "fp").require_lease(driver.token)
    worker_run.save_stage("part-0", {"x": np.ones(2)})  # the driver holds it: fine
    time.sleep(0.4)  # the driver stopped renewing: expired
    with pytest.raises(LeaseLostError, match="expired"):
        worker_run.save_stage("part-1", {"x": np.ones(2)})
    with run_lease(root, "c", "r1", owner="other"):
        with pytest.raises(LeaseLostError, match="now held by 'other'"):
            worker_run.save_stage("part-1", {"x": np.ones(2)})
    assert worker_run.require_lease(None).is_complete("part-0")
