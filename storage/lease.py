"""One writer per run: a lease object ``<run folder>/lease.json``.

The lease holds its owner, a random token and an expiry time; a heartbeat thread renews
it every ``ttl_s / 3`` seconds.  Acquiring is an exclusive create:

- local disk: ``os.link`` of a temporary file (fails if the lease exists, O_EXCL-like and
  never torn); takeover of an expired lease, renewal and release are compare-and-swap
  under an ``flock`` on ``lease.lock`` beside it;
- S3 (MinIO, AWS): ``PutObject`` with ``If-None-Match: *``; takeover, renewal and release
  are ``PutObject`` with ``If-Match: <ETag>`` of the record that was read;
- ``memory://``: the same steps under a process-wide lock (that filesystem is per process);
- other filesystems: check-then-write, best effort.

A second writer waits (up to ``wait_s``) or fails with :class:`RunLeaseError` naming the run
and the owner.  A holder whose renewal fails (the lease expired and was taken over) is told
by :class:`LeaseLostError` at its next :meth:`RunLease.check` (``Run.save_stage`` calls it).
Readers never need the lease.  Expiry compares wall clocks: hosts must agree on the time to
well within ``ttl_s``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator

from ._integrity import parse_json
from ._location import Location, json_dumps, resolve, run_location
from ._publish import is_precondition_failure, write_exclusive
from .errors import CorruptedFileError, LeaseLostError, RunLeaseError

LEASE_FILE = "lease.json"
_LOCK_FILE = "lease.lock"
_MEMORY_LOCK = threading.Lock()


def default_owner() -> str:
    """``<host>:<pid>:<thread>``: who holds a lease, for the messages of the others."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


class RunLease:
    """Exclusive writer lease on a run folder (see the module docstring).

    Parameters
    ----------
    loc : Location
        The run folder.
    label : str
        How the run is named in messages (``run 'r1' of collection 'c'``).
    owner : str, optional
        Recorded in the lease; default :func:`default_owner`.
    ttl_s : float
        Lifetime of one renewal; a dead holder blocks others for at most this long.
    wait_s : float
        How long :meth:`acquire` waits for a held lease before failing.
    poll_s : float
        Delay between attempts while waiting.
    heartbeat : bool
        Renew from a daemon thread every ``ttl_s / 3`` seconds while held.
    """

    def __init__(
        self,
        loc: Location,
        label: str,
        *,
        owner: str | None = None,
        ttl_s: float = 60.0,
        wait_s: float = 0.0,
        poll_s: float = 0.5,
        heartbeat: bool = True,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        self._loc = loc
        self.label = label
        self.owner = owner or default_owner()
        self.ttl_s = float(ttl_s)
        self.wait_s = float(wait_s)
        self.poll_s = float(poll_s)
        self._heartbeat = heartbeat
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._held = False
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- state ---------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """True while acquired, not released and not known to be lost."""
        return self._held and self._lost is None

    def check(self) -> None:
        """Raise :class:`LeaseLostError` unless this lease is still held.

        Writers call it before each commit (a stage manifest, an artifact publish).
        """
        if not self._held:
            raise LeaseLostError(f"{self.label}: writer lease not held by {self.owner}")
        if self._lost is not None:
            raise LeaseLostError(f"{self.label}: writer lease lost by {self.owner}: {self._lost}")

    def __repr__(self) -> str:
        return f"RunLease({self.label!r}, owner={self.owner!r}, held={self.held})"

    # ---- record I/O ----------------------------------------------------------------------
    def _record(self, expires: float) -> bytes:
        now = time.time()
        return json_dumps({
            "owner": self.owner, "token": self.token, "ttl_s": self.ttl_s,
            "renewed": _iso(now), "expires": expires, "expires_iso": _iso(expires),
        }).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        """(record, etag) of the current lease, (None, None) if there is none."""
        where = self._loc.child(LEASE_FILE).url
        etag = None
        self._loc.invalidate()
        try:
            if self._is_s3:
                etag = self._loc.fs.info(self._loc.child(LEASE_FILE).path).get("ETag")
            raw = self._loc.read_bytes(LEASE_FILE)
        except FileNotFoundError:
            return None, None
        try:
            record = parse_json(raw, where)
        except CorruptedFileError:
            record = {"owner": "<damaged lease>", "token": None, "expires": 0.0}  # treated as expired
        if not isinstance(record, dict):
            record = {"owner": "<damaged lease>", "token": None, "expires": 0.0}
        return record, etag

    @property
    def _is_s3(self) -> bool:
        return self._loc.protocol in ("s3", "s3a")

    @contextlib.contextmanager
    def _cas_guard(self) -> Iterator[None]:
        """Serialise read-decide-write steps where the store has no conditional write."""
        if self._loc.is_local:
            import fcntl

            os.makedirs(self._loc.path, exist_ok=True)
            fd = os.open(self._loc.child(_LOCK_FILE).path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        elif self._loc.protocol == "memory":
            with _MEMORY_LOCK:
                yield
        else:
            yield  # S3: If-Match below; other stores: best effort

    def _replace(self, data: bytes, etag: str | None) -> bool:
        """Write the lease over the record read with *etag*; False if it changed meanwhile."""
        path = self._loc.child(LEASE_FILE).path
        if self._is_s3:
            try:
                out = self._loc.fs.pipe_file(path, data, IfMatch=etag) if etag else self._loc.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            except Exception as exc:  # noqa: BLE001 - 412 Precondition Failed: someone else wrote
                if is_precondition_failure(exc):
                    return False
                raise
            self._etag = (out or {}).get("ETag") if isinstance(out, dict) else None
            self._loc.invalidate()
            return True
        self._loc.write_bytes(data, LEASE_FILE)
        return True

    def _create(self, data: bytes) -> bool:
        try:
            write_exclusive(self._loc, data, LEASE_FILE)
        except FileExistsError:
            return False
        if self._is_s3:
            self._loc.invalidate()
            with contextlib.suppress(Exception):
                self._etag = self._loc.fs.info(self._loc.child(LEASE_FILE).path).get("ETag")
        return True

    # ---- acquire / renew / release -------------------------------------------------------
    def _try_acquire(self) -> dict | None:
        """One attempt: None on success, else the holder's record."""
        data = self._record(time.time() + self.ttl_s)
        if self._create(data):
            return None
        with self._cas_guard():
            record, etag = self._read()
            if record is None:  # released between our create and read: try again
                return {"owner": "<released>", "expires": 0.0, "retry": True}
            expires = float(record.get("expires") or 0.0) if isinstance(record.get("expires"), (int, float)) else 0.0
            if expires > time.time():
                return record
            # expired (dead holder) or released: take it over, atomically against the others
            if self._replace(data, etag):
                return None
            return {"owner": record.get("owner"), "expires": 0.0, "retry": True}

    def acquire(self) -> "RunLease":
        """Take the lease, waiting up to ``wait_s`` for the current holder.

        Raises
        ------
        RunLeaseError
            Still held by another writer after ``wait_s`` (names the owner and expiry).
        """
        if self._held:
            return self
        deadline = time.monotonic() + self.wait_s
        while True:
            holder = self._try_acquire()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                left = float(holder.get("expires") or 0.0) - time.time()
                raise RunLeaseError(
                    f"{self.label} is being written by {holder.get('owner')!r} (its lease expires in "
                    f"{max(left, 0):.0f} s unless renewed); wait for it to finish, or use another run id"
                )
            if not holder.get("retry"):
                time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))
        self._held, self._lost = True, None
        self._stop.clear()
        if self._heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat-{self.token[:8]}", daemon=True)
            self._thread.start()
        return self

    def renew(self) -> None:
        """Push the expiry ``ttl_s`` ahead (the heartbeat calls this).

        Raises
        ------
        LeaseLostError
            The lease on the store is no longer ours (expired and taken over).
        """
        self.check()
        with self._cas_guard():
            record, etag = self._read()
            if record is None or record.get("token") != self.token:
                who = "nobody" if record is None else repr(record.get("owner"))
                self._lost = f"now held by {who}"
                raise LeaseLostError(f"{self.label}: writer lease of {self.owner} lost (now held by {who})")
            if not self._replace(self._record(time.time() + self.ttl_s), etag):
                self._lost = "changed by another writer during renewal"
                raise LeaseLostError(f"{self.label}: writer lease of {self.owner} lost during renewal")

    def _beat(self) -> None:
        period = self.ttl_s / 3.0
        while not self._stop.wait(period):
            try:
                self.renew()
            except LeaseLostError:
                return
            except Exception:  # noqa: BLE001 - transient store error: retry next beat
                continue

    def release(self) -> None:
        """Give the lease up (only if still ours); idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(FileNotFoundError), self._cas_guard():
            record, etag = self._read()
            if record is None or record.get("token") != self.token:
                return
            if self._loc.is_local or self._loc.protocol == "memory":
                self._loc.rm(LEASE_FILE)
            else:  # keep the object, expired: a conditional overwrite never removes a newer lease
                self._replace(self._record(0.0), etag)

    def __enter__(self) -> "RunLease":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_lease(loc: Location, label: str, token: str) -> None:
    """Raise :class:`LeaseLostError` unless the lease on the store has *token* and is live.

    For processes that commit on behalf of a lease holder (Dask workers writing stages):
    one small read per call.
    """
    probe = RunLease(loc, label, owner="<check>", heartbeat=False)
    record, _ = probe._read()
    if record is None or record.get("token") != token:
        who = "nobody" if record is None else repr(record.get("owner"))
        raise LeaseLostError(f"{label}: the writer lease this process works for is gone (now held by {who})")
    expires = record.get("expires")
    if not isinstance(expires, (int, float)) or expires <= time.time():
        raise LeaseLostError(f"{label}: the writer lease of {record.get('owner')!r} expired")


def run_lease(
    url: str,
    collection_name: str,
    run_id: str,
    *,
    owner: str | None = None,
    ttl_s: float = 60.0,
    wait_s: float = 0.0,
    poll_s: float = 0.5,
    storage_options: dict | None = None,
) -> RunLease:
    """The writer lease of a run (not yet acquired: use it as a context manager).

    Parameters
    ----------
    url, collection_name, run_id : str
        Store root, collection and run id, as for :func:`storage.open_run`.
    owner : str, optional
        Recorded in the lease and shown to other writers; default ``host:pid:thread``.
    ttl_s : float
        Expiry of one renewal; the heartbeat renews every ``ttl_s / 3``.
    wait_s : float
        Wait this long for another holder before raising :class:`RunLeaseError`.

    Examples
    --------
    >>> with run_lease(store, "c", "r1", wait_s=30) as lease:   # doctest: +SKIP
    ...     run = open_run(store, "c", "r1", params, fp)
    ...     run.save_stage("scan", arrays)    # or call lease.check() before each commit
    """
    loc = run_location(resolve(url, storage_options), collection_name, run_id)
    label = f"run {run_id!r} of collection {collection_name!r}"
    return RunLease(loc, label, owner=owner, ttl_s=ttl_s, wait_s=wait_s, poll_s=poll_s)
