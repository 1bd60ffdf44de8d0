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
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from flows.params import DType, Method, Order
from pipeline.params import ClusteringParams

try:  # recent typer vendors click: its exceptions are not the ones of the click package
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer
    import click

_EXIT = tuple({typer.Exit, *(c for c in (getattr(click.exceptions, "Exit", None),) if c)})
_ABORT = tuple({typer.Abort, *(c for c in (getattr(click.exceptions, "Abort", None),) if c)})
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())

__all__ = ["app", "main", "CLIError", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_MISSING", "EXIT_CORRUPT", "EXIT_INTERNAL"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING, EXIT_CORRUPT, EXIT_INTERNAL = 0, 1, 2, 3, 4, 5
DEFAULT_STORE = "./cmsvd-data"
DEFAULT_DEMO_STORE = "./cmsvd-demo"
REPORT_HTML = "report.html"


class CLIError(Exception):
    """A user-facing error: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


app = typer.Typer(
    name="cmsvd",
    help=(
        "Cluster matrix collections into groups that share one truncated-SVD basis with a "
        "certified relative error <= eps, and compress them.\n\n"
        "Start with: cmsvd demo"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ---- consoles, output and errors ---------------------------------------------------------


def _out():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _err():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _shown(value: Any) -> str:
    """``str(value)`` with non-printable characters as Python escapes (``\\n``, ``\\x1b``).

    Stored names (blocks, provenance, paths) can hold anything; an escape sequence
    printed raw would drive the terminal.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _esc(value: Any, style: str = "") -> "rich.text.Text":  # noqa: F821
    """*value* as a literal Rich ``Text`` for ``print``, titles and table cells.

    A ``Text`` is never parsed as markup, so a name such as ``[/bold]`` or ``a\\[b``
    prints as it is (``rich.markup.escape`` alone does not round-trip backslashes
    before ``[``).  Combine with styled parts through ``Text.assemble``.
    """
    from rich.text import Text

    return Text(_shown(value), style=style)


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2) + "\n")
    sys.stdout.flush()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text.strip("'\"")
    return " ".join(text.split())


import errno as _errno

# store access problems that are not "missing": say what happened
_OS_PROBLEMS = {
    _errno.ENOSPC: "no space left on the store's device: free some space or use another --store",
    _errno.EDQUOT: "disk quota exceeded on the store: free some space or use another --store",
    _errno.EROFS: "the store is on a read-only filesystem: use a writable --store",
    _errno.EACCES: "permission denied on the store: check its owner and permissions",
    _errno.EPERM: "operation not permitted on the store: check its owner and permissions",
}


def _classify(exc: BaseException) -> tuple[int, str]:
    """Exit code and one-line message of an exception raised by a command."""
    import storage

    if isinstance(exc, CLIError):
        return exc.code, _one_line(exc)
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover
        ValidationError = ()  # type: ignore[assignment]
    if ValidationError and isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "parameters"
        return EXIT_USAGE, f"invalid {where}: {first.get('msg')}"
    if isinstance(exc, storage.IntegrityError):  # CheckpointError included
        return EXIT_CORRUPT, _one_line(exc)
    if isinstance(exc, storage.CollectionExistsError):
        return EXIT_USAGE, _one_line(exc) + " (use --overwrite to replace it)"
    if isinstance(exc, (storage.CollectionNotFoundError, FileNotFoundError, NotADirectoryError)):
        msg = _one_line(exc)
        if type(exc) in (FileNotFoundError, NotADirectoryError) and getattr(exc, "filename", None):
            msg = f"no such file or folder: {exc.filename}"
        elif isinstance(exc, FileNotFoundError) and "/" in msg and " " not in msg:
            msg = f"no such file or folder: {msg}"
        return EXIT_MISSING, msg
    if isinstance(exc, storage.RunMismatchError):
        return EXIT_USAGE, _one_line(exc) + " (choose another --run-id)"
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or _one_line(exc)
        hint = " (pip install 'cmsvd[formats]')" if name in ("h5py", "safetensors") else ""
        return EXIT_USAGE, f"missing optional dependency {name}{hint}"
    if isinstance(exc, storage.RunLeaseError):
        return EXIT_USAGE, _one_line(exc)
    if isinstance(exc, json.JSONDecodeError):  # a damaged metadata file read outside storage
        return EXIT_CORRUPT, f"stored metadata is corrupted (not valid JSON): {_one_line(exc)}"
    if isinstance(exc, (ValueError, KeyError, IndexError)):
        msg = _one_line(exc)
        corrupt = any(w in msg.lower() for w in ("corrupt", "checksum do not match", "crc32c"))
        return (EXIT_CORRUPT if corrupt else EXIT_USAGE), msg
    if isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in ("decompress", "decod", "checksum", "crc")):
        return EXIT_CORRUPT, f"stored data is corrupted: {_one_line(exc)}"
    if isinstance(exc, OSError) and exc.errno in _OS_PROBLEMS:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return EXIT_MISSING, f"{_OS_PROBLEMS[exc.errno]}{where}"
    if isinstance(exc, OSError):
        return EXIT_MISSING, _one_line(exc)
    return EXIT_INTERNAL, f"{type(exc).__name__}: {_one_line(exc)} (internal error; CMSVD_DEBUG=1 shows the traceback)"


def _debug() -> bool:
    return os.environ.get("CMSVD_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _handle_errors(fn: Callable) -> Callable:
    """Run a command; turn exceptions into ``error: ...`` and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (*_EXIT, *_ABORT, click.exceptions.ClickException):
            raise
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            raise typer.Exit(130)
        except BaseException as exc:  # noqa: BLE001 - the CLI boundary
            if isinstance(exc, SystemExit):
                raise
            if _debug():
                import traceback

                traceback.print_exc()
            code, msg = _classify(exc)
            sys.stderr.write(f"error: {msg}\n")
            sys.stderr.flush()
            raise typer.Exit(code)

    return wrapper


def _command(*args: Any, **kwargs: Any) -> Callable:
    """``@app.command`` with the error handling applied."""

    def deco(fn: Callable) -> Callable:
        return app.command(*args, **kwargs)(_handle_errors(fn))

    return deco


# ---- shared options ---------------------------------------------------------------------

StoreOpt = typer.Option(DEFAULT_STORE, "--store", "-s", envvar="CMSVD_STORE", help="Store root: folder, file://, memory:// or s3://bucket/prefix.", show_default=True)
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON on stdout (and nothing else there).")
SchedulerOpt = typer.Option(None, "--scheduler", help="Dask scheduler address (tcp://host:8786). Default: CMSVD_DASK_SCHEDULER, else a LocalCluster.")
RunIdOpt = typer.Option(None, "--run-id", help="Run id (the folder runs/<collection>/<run-id>). Default: the latest run with an artifact.")


def _check_eps(eps: float) -> float:
    try:
        return ClusteringParams.constraints["eps"].check("eps", eps)
    except ValueError:
        raise typer.BadParameter(f"{eps} is not in (0, 1)", param_hint="'--eps'") from None


def _spec_option(name: str, *decls: str, default: Any = None, **kwargs: Any) -> Any:
    """A typer option whose default and bounds come from pipeline.params.ClusteringParams
    (the constraint table the library and the Prefect forms share)."""
    bounds = ClusteringParams.constraints[name].bounds()
    return typer.Option(ClusteringParams.default(name) if default is None else default, *decls,
                        min=bounds.get("ge"), max=bounds.get("le"), **kwargs)


def _parse_floats(text: str | None, what: str) -> list[float]:
    if not text:
        return []
    try:
        values = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=what) from None
    for v in values:
        if not 0.0 < v < 1.0:
            raise typer.BadParameter(f"{v} is not in (0, 1)", param_hint=what)
    return sorted(set(values))


def _parse_sizes(text: str) -> list[int]:
    """``"2:40:4"`` (start:stop:step, stop included) or ``"2,5,10"``."""
    try:
        if ":" in text:
            parts = [int(x) for x in text.split(":")]
            start, stop, step = (parts + [1])[:3] if len(parts) == 2 else parts
            if step < 1:
                raise ValueError
            sizes = list(range(start, stop + 1, step))
        else:
            sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected start:stop[:step] or a comma list, got {text!r}", param_hint="'--sizes'") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"group sizes must be >= 1, got {text!r}", param_hint="'--sizes'")
    return sizes


# ---- quiet Prefect and Dask -------------------------------------------------------------


def _quiet_environment(verbose: bool = False, prefect_home: Path | None = None) -> None:
    """Logging and Prefect settings for a CLI process (before Prefect is imported).

    Console logs of Prefect and Dask go down to warnings (the dashboard keeps the run
    logs at INFO); without ``PREFECT_API_URL`` Prefect starts a temporary local API,
    whose start-up may be slow on a busy machine, so its timeout is raised.
    """
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "error")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        import logging

        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker", "distributed.core",
                     "distributed.http.proxy", "flows", "prefect"):
            logging.getLogger(name).setLevel(logging.ERROR if name.startswith("distributed") else logging.WARNING)
    from flows._prefect_env import configure_prefect_env

    configure_prefect_env()  # the temporary API's start-up timeout, shared with python -m flows
    if prefect_home is not None and not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(prefect_home)


def _quiet_dask_loggers() -> None:
    import logging

    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker", "distributed.core"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _DaskClient:
    """A distributed.Client to ``address`` (or the environment's), else a quiet LocalCluster."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    def __enter__(self):
        from flows.dask_cluster import local_cluster_options, resolve_scheduler_address

        from distributed import Client, LocalCluster

        _quiet_dask_loggers()
        resolved = resolve_scheduler_address(self.address)
        self._cluster = None
        if resolved is None:
            opts = local_cluster_options()
            opts["silence_logs"] = 50  # logging.CRITICAL: task errors reach the client anyway
            self._cluster = LocalCluster(**opts)
            self.client = Client(self._cluster)
        else:
            try:
                self.client = Client(resolved, timeout=30)
            except OSError as exc:
                raise CLIError(f"cannot reach the Dask scheduler at {resolved}: {_one_line(exc)}", EXIT_MISSING) from None
        return self.client

    def __exit__(self, *exc: Any) -> None:
        try:
            self.client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()


# ---- progress ----------------------------------------------------------------------------


class StageBars:
    """Progress bars on stderr for ``progress(stage, done, total)`` callbacks.

    On a terminal: one rich bar per stage.  Otherwise (logs, CI, tests): one line per
    finished stage.  ``quiet`` shows nothing.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.console = _err()
        self.live = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.finished: set[str] = set()
        self._lock = threading.Lock()
        # a stage first heard of when it is already done started when the one before ended
        self._last_end = time.monotonic()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()
        self.progress = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console, transient=False,
            )

    #: Seconds between "still working" lines when stderr is not a terminal.
    HEARTBEAT_S = 30.0

    def __enter__(self) -> "StageBars":
        self._last_end = time.monotonic()
        if self.progress is not None:
            self.progress.start()
        elif not self.quiet:
            self._stop.clear()
            self._heartbeat = threading.Thread(target=self._beat, name="cmsvd-heartbeat", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1.0)
            self._heartbeat = None
        if self.progress is not None:
            self.progress.stop()

    def _beat(self) -> None:
        """Non-terminal output: a line every HEARTBEAT_S while a stage runs, so a long
        stage (or one that reports only at its end) never looks hung."""
        while not self._stop.wait(self.HEARTBEAT_S):
            with self._lock:
                now = time.monotonic()
                running = [st for st in self.started if st not in self.finished]
                if running:
                    st = running[-1]
                    self.console.print(f"  {st:<12} running ({now - self.started[st]:.0f} s)")
                else:
                    self.console.print(f"  working ({now - self._last_end:.0f} s since the last stage finished)")

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            self.started.setdefault(stage, self._last_end if done >= total else now)
            if self.progress is not None:
                if stage not in self.tasks:
                    self.tasks[stage] = self.progress.add_task(stage, total=max(total, 1))
                self.progress.update(self.tasks[stage], completed=done, total=max(total, 1))
            elif not self.quiet and done >= total and stage not in self.finished:
                self.console.print(f"  {stage:<12} done ({now - self.started[stage]:.1f} s)")
            if done >= total and stage not in self.finished:
                self.finished.add(stage)
                self._last_end = now

    def finish(self, stage: str, seconds: float | None = None) -> None:
        """A stage finished elsewhere (seen in the run folder), taking ``seconds``."""
        with self._lock:
            if self.progress is not None:
                done = f"{stage} ({seconds:.1f} s)" if seconds is not None else stage
                self.tasks[stage] = self.progress.add_task(done, total=1, completed=1)
            elif not self.quiet:
                self.console.print(f"  {stage:<12} done" + (f" ({seconds:.1f} s)" if seconds is not None else ""))
            self.finished.add(stage)
            self._last_end = time.monotonic()

    def message(self, text: str) -> None:
        if not self.quiet:
            (self.progress.console if self.progress is not None else self.console).print(text)


class RunFolderWatcher(threading.Thread):
    """Follow a run that another component (the Prefect flow) executes, by polling the
    stage manifests in its run folder; reports each stage to a :class:`StageBars`."""

    FAMILIES = ("scan", "partition", "local", "merge", "certify", "compress", "report")

    def __init__(self, run_url: str, storage_options: dict | None, bars: StageBars, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.run_url = run_url.rstrip("/")
        self.storage_options = storage_options or {}
        self.bars = bars
        self.interval = interval
        self._halt = threading.Event()
        self.seen: set[str] = set()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.poll()  # final state

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - never disturb the run
                pass

    def poll(self) -> None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.run_url, **self.storage_options)
        fs.invalidate_cache()
        try:
            names = {p.rstrip("/").rsplit("/", 2)[-2] for p in fs.glob(f"{path}/*/manifest.json")}
        except FileNotFoundError:
            names = set()
        if fs.exists(f"{path}/report.json"):
            names.add("report")

        def seconds(stage: str) -> float | None:
            try:
                return float(json.loads(fs.cat_file(f"{path}/{stage}/manifest.json"))["meta"]["seconds"])
            except Exception:  # noqa: BLE001
                return None

        for fam in self.FAMILIES:
            if fam in self.seen:
                continue
            if fam == "merge":
                rounds = sorted(n for n in names if n.startswith("merge-"))
                if not rounds or "certify" not in names:
                    continue
                secs = [seconds(n) for n in rounds]
                self.seen.add(fam)
                self.bars.finish(f"merge ({len(rounds)} round{'s' if len(rounds) > 1 else ''})",
                                 sum(x for x in secs if x is not None))
            elif fam in names:
                self.seen.add(fam)
                self.bars.finish(fam, None if fam == "report" else seconds(fam))


# ---- store helpers ------------------------------------------------------------------------


def _open_collection(store: str, name: str):
    import storage

    return storage.open_collection(store, name)


def _list_runs(coll) -> list[dict]:
    import storage

    return storage.list_runs(coll)


def _list_artifacts(coll) -> list[dict]:
    import storage

    return storage.list_artifacts(coll)


def _resolve_run_id(coll, run_id: str | None) -> str:
    """The given run id, else the latest artifact's label, else the latest run.

    Every id returned passes the storage name check (the listings skip unsafe folders).
    """
    if run_id is not None:
        _check_names(run_id=run_id)
        return run_id
    arts = _list_artifacts(coll)
    if arts:
        return arts[-1]["label"]
    runs = _list_runs(coll)
    if runs:
        return runs[-1]["run_id"]
    raise CLIError(f"collection {coll.name!r} has no run yet: start one with 'cmsvd cluster {coll.name}'", EXIT_MISSING)


def _run_url(coll, run_id: str) -> str:
    import storage

    return storage.run_url(coll, run_id)


def _run_record(coll, run_id: str) -> dict:
    import storage

    try:
        return storage.read_run_record(coll, run_id)
    except storage.RunNotFoundError as exc:
        raise CLIError(str(exc), EXIT_MISSING) from None


def _read_report(coll, run_id: str) -> dict | None:
    import storage

    return storage.read_run_json(coll, run_id, "report.json")


def _write_text(url: str, text: str, storage_options: dict | None) -> None:
    from flows._common import write_bytes

    write_bytes(url, text.encode(), storage_options)


def _local_path(url: str) -> str:
    """A path to show the user (file:// stripped)."""
    return url[len("file://"):] if url.startswith("file://") else url


def _check_names(**names: str | None) -> None:
    """Refuse an unsafe collection name or run id before any file is read or written.

    Run ids and collection names become path components of the store
    (``runs/<collection>/<run_id>/``), so ``../x`` or ``a/b`` would read and write
    outside it.  The rule is :func:`storage.check_name`; the keyword
    names the field in the message (``run_id`` -> "run id").

    Raises
    ------
    CLIError
        Exit 2, one line naming the field and the value.
    """
    from storage import check_name
    from storage.errors import InvalidNameError

    for field, value in names.items():
        if value is None:
            continue
        try:
            check_name(value, field.replace("_", " "))
        except InvalidNameError as exc:
            raise CLIError(_one_line(exc), EXIT_USAGE) from None


# ---- parameters ---------------------------------------------------------------------------


def _cluster_params(store, collection, rank, eps, method, order, oversampling, patience, shard_size, run_id):
    """The cmsvd-cluster flow's parameters (the Dask scheduler is not one: see :func:`_flow_scheduler`)."""
    from flows.params import ClusterParameters

    return ClusterParameters(
        store_url=store, collection=collection, rank=rank, eps=eps, method=method.value, order=order.value,
        oversampling=oversampling, patience=patience, shard_size=shard_size, run_id=run_id,
    )


@contextlib.contextmanager
def _flow_scheduler(address: str | None) -> Iterator[None]:
    """``--scheduler`` for flows run in this process, through the worker's environment.

    Flows take the scheduler only from their worker's environment (a run's parameters
    cannot choose it); for ``cmsvd run`` and ``cmsvd demo`` this process is the worker,
    so the user's own ``--scheduler`` is set as ``CMSVD_DASK_SCHEDULER`` for the call.
    """
    if not address or not address.strip():
        yield
        return
    name = "CMSVD_DASK_SCHEDULER"
    previous = os.environ.get(name)
    os.environ[name] = address.strip()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _summary_from_report(report: dict, urls: dict[str, str] | None = None) -> dict:
    from flows.html_report import honest_numbers

    groups = report["groups"]
    multi = [g for g in groups if len(g["blocks"]) > 1]
    eps = report["params"].get("eps")
    honest = honest_numbers(report)
    return {
        "run_id": report.get("run_id"),
        "collection": report["collection"]["name"],
        "blocks": report["collection"]["blocks"],
        "groups": len(groups),
        "singletons": len(groups) - len(multi),
        "rank": report["params"].get("rank"),
        "compression_ratio": report["compression_ratio"],
        "compression_ratio_adaptive": report["compression_ratio_adaptive"],
        # worst exact rank-r error over the groups stored compressed (raw ones store no approximation)
        "max_certified_error": honest["max_certified_error_compressed"],
        "max_error": report["max_error"],
        "raw_blocks": honest["raw_blocks"],
        "raw_groups": honest["raw_groups"],
        "raw_block_errors": honest["raw_block_errors"],
        "raw_unfit_blocks": honest["raw_unfit_blocks"],
        "eps": eps,
        "guarantee_ok": all(g["error"] <= eps for g in multi),
        "bytes": report["bytes"],
        "timings": report["timings"],
        **({"baseline": report["baseline"]} if report.get("baseline") else {}),
        **({"passthrough": report["passthrough"]} if report.get("passthrough") else {}),
        **({"files": urls} if urls else {}),
    }


def _guidance(summary: dict) -> str | None:
    """One line saying why little compressed and what would help (None when most did)."""
    raw, blocks = summary.get("raw_blocks", 0), summary["blocks"]
    errs = summary.get("raw_block_errors")
    if not blocks or raw * 2 < blocks or not errs:
        return None
    r, eps = summary.get("rank"), summary.get("eps")
    unfit = summary.get("raw_unfit_blocks", raw)
    return (f"{raw} of {blocks} blocks are stored as they are; {unfit} of them because their own rank-{r} errors, "
            f"{errs[0]:.3g} to {errs[1]:.3g}, are above eps = {eps} and no group fits them. A larger --rank, a larger "
            "--eps, or ingest with --per column (one block per column, so similar columns can share a basis) would help.")


def _print_summary(summary: dict, title: str) -> None:
    from rich.table import Table

    from flows.html_report import fmt_bytes

    out = _out()
    table = Table(title=_esc(title), show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    b = summary["bytes"]
    ok = summary["guarantee_ok"]
    r = summary.get("rank")
    table.add_row("run id", _esc(summary["run_id"]))
    table.add_row("groups", f"{summary['groups']} ({summary['singletons']} single blocks) from {summary['blocks']} blocks")
    table.add_row("compression ratio", f"{summary['compression_ratio']:.3f}x at rank {r}")
    table.add_row("adaptive ratio", f"{summary['compression_ratio_adaptive']:.3f}x with per-group ranks")
    base = summary.get("baseline") or {}
    if "compression_ratio" in base:
        table.add_row("per-block SVD", f"{base['compression_ratio']:.3f}x (baseline: each block alone at its own "
                                       f"smallest rank meeting eps; {base['raw_blocks']} blocks raw)")
    table.add_row("worst certified error", f"[{'green' if ok else 'red'}]{summary['max_certified_error']:.4g}[/] "
                                           f"(eps = {summary['eps']}; exact rank-{r} error, groups stored compressed)")
    raw = summary.get("raw_blocks", 0)
    table.add_row("blocks stored raw", f"{raw} of {summary['blocks']} ({summary.get('raw_groups', 0)} groups; as they "
                                       "are, error 0: no rank-r form is smaller or fits eps)")
    table.add_row("worst stored error", f"{summary['max_error']:.4g} (realised error of what the artifact stores)")
    ratio = b["input"] / max(1, b["compressed"])
    table.add_row("bytes in / out", f"{fmt_bytes(b['input'])} / {fmt_bytes(b['compressed'])} ({ratio:.2f}x smaller on disk)")
    pt = summary.get("passthrough")
    if pt:
        table.add_row("kept as is", f"{pt['items']} source items ({fmt_bytes(pt['bytes'])}) not cut into blocks, in both")
    table.add_row("time per stage", ", ".join(f"{k} {v:.2f}s" for k, v in summary["timings"].items()))
    for key, path in (summary.get("files") or {}).items():
        table.add_row(_esc(key), _esc(_local_path(path)))
    out.print(table)
    hint = _guidance(summary)
    if hint:
        out.print(_esc(hint))


def _guarantee_exit(summary: dict) -> None:
    if not summary["guarantee_ok"]:
        sys.stderr.write(
            f"error: certified error {summary['max_certified_error']:.6g} exceeds eps = {summary['eps']} for a group\n"
        )
        raise typer.Exit(EXIT_FAILED)


# ---- sequential clustering (in memory) -------------------------------------------------


def _load_in_memory(coll, max_memory_gib: float, what: str):
    import numpy as np

    need = coll.rows * coll.n_columns * 8 * 2  # float64 copy plus working space
    if need > max_memory_gib * 2**30:
        raise CLIError(
            f"collection {coll.name!r} needs about {need / 2**30:.2f} GiB in memory for {what}, above the "
            f"--max-memory-gib budget of {max_memory_gib:g} GiB; use the distributed mode or raise the budget",
            EXIT_USAGE,
        )
    from pipeline import as_layout

    try:  # blocks of extreme magnitude come back scaled, norms as stored (pipeline.magnitude)
        layout = as_layout(coll.column_range(0, coll.n_columns), coll.offsets)
    except ValueError as exc:  # NaN or Inf in stored data
        raise CLIError(f"collection {coll.name!r}: {exc}; the stored data is corrupted", EXIT_CORRUPT) from None
    norms2 = layout.norms2
    bad = np.flatnonzero(np.abs(norms2 - coll.norms2) > 1e-6 * np.maximum(coll.norms2, 1e-300))
    if bad.size:
        i = int(bad[0])
        raise CLIError(f"block {i} ({coll.names[i]!r}): squared norm {norms2[i]:.6g} differs from the {coll.norms2[i]:.6g} "
                       "recorded at ingest; the stored data is corrupted", EXIT_CORRUPT)
    return layout


def _sequential_params(rank, eps, method, order, oversampling, patience) -> dict:
    spec = ClusteringParams(rank=rank, eps=eps, method=method, order=order, oversampling=oversampling, patience=patience)
    return {"mode": "sequential", **spec.greedy_kwargs()}


def _sequential_run_id(coll, params: dict) -> str:
    spec = ClusteringParams(**{k: v for k, v in params.items() if k != "mode"})
    return spec.run_id(coll.fingerprint(), "sequential")


def _sequential_cluster(coll, params: dict, run_id: str, max_memory_gib: float, bars: StageBars):
    """pipeline.cluster on the collection in memory; stage ``sequential`` in the run folder."""
    import numpy as np
    import pipeline
    import storage

    run = storage.open_run(coll.url, coll.name, run_id, params, coll.fingerprint(), storage_options=coll.storage_options)
    if run.is_complete("sequential"):
        bars("sequential", 1, 1)
        return run
    bars("load", 0, 1)
    layout = _load_in_memory(coll, max_memory_gib, "--sequential")
    bars("load", 1, 1)
    bars("sequential", 0, 1)
    start = time.perf_counter()
    kwargs = {k: v for k, v in params.items() if k != "mode"}
    result = pipeline.cluster(layout, **kwargs)
    seconds = time.perf_counter() - start
    flat = np.array([b for g in result.clusters for b in g], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(g) for g in result.clusters])]).astype(np.int64)
    run.save_stage("sequential", {"members": flat, "group_offsets": offsets, "bounds": result.bounds},
                   {"seconds": seconds, "n_groups": result.n_groups})
    bars("sequential", 1, 1)
    return run


def _sequential_compress(coll, run, max_memory_gib: float, bars: StageBars):
    """Exact errors, adaptive ranks and the artifact (label = run id) of a sequential run:
    the library's in-memory compressor, with the distributed stages' kernels and rules."""
    import numpy as np
    from pipeline.distributed.compress import compress_in_memory
    from pipeline.distributed.plan import pack_groups, unpack_groups

    params = dict(run.params)
    if run.is_complete("compress"):
        bars("compress", 1, 1)
        return
    arrays, _ = run.load_stage("sequential")
    groups = unpack_groups(arrays["members"], arrays["group_offsets"])
    layout = _load_in_memory(coll, max_memory_gib, "compressing a sequential run")
    done = compress_in_memory(coll, layout, groups, rank=int(params["rank"]), eps=float(params["eps"]),
                              label=run.run_id, params=params, progress=bars)
    members, offsets = pack_groups(done.groups)
    run.save_stage(
        "compress",
        {"members": members, "group_offsets": offsets, "errors": done.errors, "adaptive_ranks": done.adaptive_ranks,
         "stored_errors": done.stored_errors, "stored_ranks": done.stored_ranks,
         # a half of a split group has no bound of its own (0, as the distributed certify records)
         "bounds": np.array([0.0 if half else arrays["bounds"][g] for g, half in enumerate(done.split)])},
        {"seconds": done.seconds, "artifact": run.run_id, "bytes_compressed": int(done.artifact.nbytes_stored),
         "splits": done.splits},
    )


def _sequential_result(coll, run):
    """A pipeline.distributed.DistributedResult for a compressed sequential run."""
    import numpy as np
    from pipeline.distributed import DistributedResult
    from pipeline.metrics import adaptive_compression_ratio, compression_ratio

    seq, seq_meta = run.load_stage("sequential")
    comp, comp_meta = run.load_stage("compress")
    members, offsets = comp["members"], comp["group_offsets"]  # as stored: split groups are two
    groups = [members[offsets[g]: offsets[g + 1]].tolist() for g in range(len(offsets) - 1)]
    params = {k: v for k, v in run.params.items() if k != "mode"}
    stored_ranks = np.asarray(comp["stored_ranks"])
    return DistributedResult(
        groups=groups,
        errors=np.asarray(comp["errors"]),
        bounds=np.asarray(comp["bounds"]),
        ranks=np.asarray(comp["adaptive_ranks"]),
        stored_errors=np.asarray(comp["stored_errors"]),
        compression_ratio=compression_ratio(coll, groups, int(params["rank"])),
        compression_ratio_adaptive=adaptive_compression_ratio(coll, groups, np.where(stored_ranks == 0, coll.rows, stored_ranks)),
        max_error=float(np.max(comp["stored_errors"], initial=0.0)),
        timings={"sequential": float(seq_meta.get("seconds", 0.0)), "compress": float(comp_meta.get("seconds", 0.0))},
        bytes_input=int(coll.nbytes_stored),
        bytes_compressed=int(comp_meta["bytes_compressed"]),
        artifact_label=str(comp_meta["artifact"]),
        run_id=run.run_id,
        params=params,
    )


def _write_run_report(coll, result, extra_timings: dict | None = None) -> tuple[dict, dict]:
    """report.json (flows.report's builder) and its PNG plots in the run folder."""
    from flows.report import build_report, write_report

    start = time.perf_counter()
    report = build_report(coll, result, extra_timings)
    report["timings"]["report"] = 0.0
    urls = write_report(report, _run_url(coll, result.run_id), coll.storage_options)
    report["timings"]["report"] = round(time.perf_counter() - start, 3)
    _write_text(urls["report"], json.dumps(report, indent=1), coll.storage_options)
    return report, urls


def _write_html(coll, run_id: str, report: dict, sweep: list[dict] | None = None,
                verification: dict | None = None, spectra_top: int = 4) -> str:
    """report.html beside report.json in the folder of *run_id*; returns its URL.

    The folder comes from the checked *run_id*, never from ``report["run_id"]``: a
    report.json edited to name ``../../x`` must not move the output.
    """
    _check_names(run_id=run_id)
    from flows.html_report import group_spectra, have_matplotlib, render_html

    spectra = None
    if have_matplotlib() and spectra_top > 0:
        spectra = group_spectra(coll, report["groups"], top=spectra_top)
    page = render_html(report, spectra=spectra, sweep=sweep, verification=verification)
    url = f"{_run_url(coll, run_id)}/{REPORT_HTML}"
    _write_text(url, page, coll.storage_options)
    if sweep:
        _write_text(f"{_run_url(coll, run_id)}/sweep.json", json.dumps(sweep, indent=1), coll.storage_options)
    return url


def _distributed_result(coll, run_id: str, client, bars: StageBars):
    """Finish (or load) a distributed run and return its DistributedResult."""
    from flows._run import stored_run_params
    from pipeline.distributed import ClusteringRun

    kwargs = stored_run_params(coll, run_id)
    run = ClusteringRun(coll, **kwargs, client=client, run_id=run_id, progress=bars)
    return run.result()


def sweep_point(coll, run) -> dict:
    """The figures a run reports, computed the way its result computes them.

    A run whose artifact is written gives its result's own figures; otherwise the
    certified groups go through the run's own storage plan (the one ``compress`` writes:
    per group the adaptive rank or raw), so the point equals what finishing that run
    reports, without writing an artifact.
    """
    import numpy as np
    import storage
    from pipeline.distributed.plan import unpack_groups
    from pipeline.metrics import adaptive_compression_ratio, compression_ratio

    certified = run.certify()
    groups = unpack_groups(certified["members"], certified["group_offsets"])
    errors = np.asarray(certified["errors"], dtype=np.float64)
    if run.run.is_complete("compress"):
        result = run.result()
        groups, errors = result.groups, np.asarray(result.errors)
        art = storage.open_artifact(coll.url, coll.name, result.artifact_label, storage_options=coll.storage_options)
        raw = np.asarray(art.kinds) == 1
        ratio, adaptive = result.compression_ratio, result.compression_ratio_adaptive
    else:
        groups, bases, ranks = run._storage_plan(certified)  # the plan compress would write
        raw = np.array([bases[g] is None for g in range(len(groups))], dtype=bool)
        stored = np.where(raw, 0, np.asarray(ranks))
        ratio = compression_ratio(coll, groups, int(run.params["rank"]))
        adaptive = adaptive_compression_ratio(coll, groups, stored + np.where(stored == 0, coll.rows, 0))
    return {
        "eps": float(run.params["eps"]),
        "run_id": run.run_id,
        "groups": len(groups),
        "compression_ratio": float(ratio),
        "compression_ratio_adaptive": float(adaptive),
        "raw_blocks": int(sum(len(groups[g]) for g in np.flatnonzero(raw))),
        "max_certified_error_compressed": float(errors[~raw].max(initial=0.0)) if len(groups) else 0.0,
        # kept for older readers: worst exact error over groups of two or more blocks
        "max_error": float(max((errors[g] for g in range(len(groups)) if len(groups[g]) > 1), default=0.0)),
    }


def _sweep(coll, params: dict, eps_values: list[float], client, bars: StageBars) -> list[dict]:
    """The run at every other eps (same parameters otherwise, the run id ``cmsvd cluster``
    would derive): one :func:`sweep_point` each (scan..certify, no artifact)."""
    from flows._run import default_run_id
    from pipeline.distributed import ClusteringRun

    rows = []
    for eps in eps_values:
        kwargs = {**params, "eps": float(eps)}
        run_id = default_run_id(coll, kwargs)  # normalised: the id `cmsvd cluster --eps E` derives
        run = ClusteringRun(coll, **kwargs, client=client, run_id=run_id,
                            progress=lambda stage, done, total, e=eps: bars(f"eps={e:g} {stage}"[:24], done, total))
        rows.append(sweep_point(coll, run))
        run.prune()
    return rows


# ---- commands -----------------------------------------------------------------------------


class _Per(str, enum.Enum):
    """Block granularity of a safetensors ingest."""

    tensor = "tensor"
    column = "column"


class _Layout(str, enum.Enum):
    """Layout of MATLAB variables."""

    mimo = "mimo"


@_command("ingest")
def ingest_cmd(
    source: str = typer.Argument(..., help="File or folder: .npy stack (K, m, n), .npz, folder of .npy, .safetensors, .h5/.hdf5, .mat, .zarr array."),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="Collection name (default: the source's file name without suffix)."),
    store: str = StoreOpt,
    dtype: Optional[DType] = typer.Option(None, help="Storage dtype (default: float32 for float32 input, else float64)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing collection of that name."),
    stack_complex: bool = typer.Option(False, "--stack-complex", help="Complex blocks: store real rows over imaginary rows."),
    column_length: Optional[int] = typer.Option(None, "--column-length", min=1, help="safetensors: rows m of every column (768 in the paper)."),
    per: Optional[_Per] = typer.Option(None, "--per", help="safetensors: one block per tensor (default) or per column."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="HDF5: dataset or group path inside the file."),
    key: Optional[str] = typer.Option(None, "--key", help="MATLAB: variable name."),
    layout: Optional[_Layout] = typer.Option(None, "--layout", help="MATLAB: mimo for (NRB, Nr, Nt, Nc) channels."),
    as_json: bool = JsonOpt,
) -> None:
    """Load a source file or folder into a collection (streamed; atomic publish)."""
    import storage

    _check_names(collection_name=name)
    from flows.ingest import collection_summary

    src = source.rstrip("/")
    if name is None:
        base = Path(src).name
        for suffix in (".safetensors", ".hdf5", ".zarr", ".npy", ".npz", ".h5", ".he5", ".mat"):
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
        name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in base).lstrip("._-") or "collection"
    suffix = Path(src).suffix.lower()
    if suffix == ".safetensors" and column_length is None:
        raise CLIError("a .safetensors source needs --column-length (the rows m of every column block)")
    options: dict[str, Any] = {"overwrite": overwrite}
    if dtype is not None:
        options["dtype"] = dtype.value
    if stack_complex:
        options["stack_complex"] = True
    per_value = per.value if per is not None else None
    layout_value = layout.value if layout is not None else None
    for opt, value, formats in (("column_length", column_length, {".safetensors"}), ("per", per_value, {".safetensors"}),
                                ("dataset", dataset, {".h5", ".hdf5", ".he5"}), ("key", key, {".mat"}),
                                ("layout", layout_value, {".mat"})):
        if value is not None:
            if suffix not in formats:
                raise CLIError(f"--{opt.replace('_', '-')} applies to {'/'.join(sorted(formats))} sources, not {suffix or 'a folder'}")
            options[opt] = value
    bars = StageBars(quiet=as_json)
    with bars:
        bars("ingest", 0, 1)
        start = time.perf_counter()
        coll = storage.ingest_path(store, name, source, **options)
        bars("ingest", 1, 1)
    summary = collection_summary(coll)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    passthrough = _passthrough_summary(coll)
    if passthrough is not None:
        summary["passthrough"] = passthrough
    if as_json:
        _print_json(summary)
        return
    from flows.html_report import fmt_bytes

    from rich.text import Text

    _out().print(Text.assemble(
        "ingested ", _esc(summary["blocks"], "bold"),
        f" blocks ({summary['rows']} x {summary['columns']} {summary['dtype']}, "
        f"{fmt_bytes(summary['bytes'])} raw, {fmt_bytes(summary['bytes_stored'])} on disk) into collection ",
        _esc(name, "bold"), _esc(f" at {_local_path(coll.url)} in {summary['seconds']:.1f} s"),
    ))
    if passthrough and passthrough["count"]:
        _out().print(_esc(_passthrough_line(passthrough)))


def _passthrough_summary(coll) -> dict | None:
    """Counts of the source items kept as they are (not blocks), by reason; None when the
    source format records none (only safetensors does)."""
    tensors = (coll.provenance or {}).get("tensors")
    if not tensors and not coll.passthrough_entries:
        return None
    reasons: dict[str, int] = {}
    for e in coll.passthrough_entries:
        reason = str(e.get("reason") or "kept as is")
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "count": len(coll.passthrough_entries),
        "tensors": len(tensors or []),
        "bytes": int(sum(int(e.get("nbytes", 0)) for e in coll.passthrough_entries)),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "names": coll.passthrough_names,
    }


def _passthrough_line(p: dict) -> str:
    from flows.html_report import fmt_bytes

    why = ", ".join(f"{n} {reason}" for reason, n in p["reasons"].items())
    return (f"kept {p['count']} of {p['tensors']} tensors as they are ({fmt_bytes(p['bytes'])}; not cut into "
            f"blocks, not compressed, restored byte for byte): {why}")


@_command("inspect")
def inspect_cmd(
    collection: Optional[str] = typer.Argument(None, help="Collection name; without it, list the store's collections."),
    store: str = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Summarise a collection (shape, widths, norms, provenance, runs, artifacts), or list them."""
    import numpy as np
    import storage

    _check_names(collection_name=collection)
    from flows.html_report import fmt_bytes
    from flows.ingest import collection_summary

    if collection is None:
        if "://" not in store and not Path(store).exists():
            raise CLIError(f"no store at {store}", EXIT_MISSING)
        names = storage.list_collections(store)
        rows = []
        for n in names:
            c = storage.open_collection(store, n)
            rows.append({"name": n, "blocks": c.n_blocks, "rows": c.rows, "columns": c.n_columns, "dtype": str(c.dtype),
                         "bytes_stored": int(c.nbytes_stored)})
        if as_json:
            _print_json({"store": store, "collections": rows})
            return
        from rich.table import Table

        table = Table(title=_esc(f"collections in {store}"), title_justify="left")
        for col in ("name", "blocks", "rows", "columns", "dtype", "on disk"):
            table.add_column(col, justify="left" if col in ("name", "dtype") else "right")
        for r in rows:
            table.add_row(_esc(r["name"]), str(r["blocks"]), str(r["rows"]), str(r["columns"]), r["dtype"], fmt_bytes(r["bytes_stored"]))
        _out().print(table if rows else _esc(f"no collections in {store}"))
        return
    coll = _open_collection(store, collection)
    summary = collection_summary(coll)
    widths, norms = coll.widths, np.sqrt(coll.norms2)
    summary["widths"] = {"min": int(widths.min()), "median": float(np.median(widths)), "max": int(widths.max())}
    summary["norms"] = {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())}
    summary["provenance"] = coll.provenance
    summary["first_blocks"] = coll.names[:5]
    summary["runs"] = _list_runs(coll)
    summary["artifacts"] = _list_artifacts(coll)
    if as_json:
        _print_json(summary)
        return
    from rich.table import Table

    out = _out()
    table = Table(title=_esc(f"collection {coll.name}"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("location", _esc(_local_path(coll.url)))
    table.add_row("blocks", _esc(f"{summary['blocks']} (e.g. {', '.join(summary['first_blocks'])})"))
    table.add_row("matrix", f"{summary['rows']} rows x {summary['columns']} columns, {summary['dtype']}")
    table.add_row("block widths", "min {min}, median {median:g}, max {max}".format(**summary["widths"]))
    table.add_row("block norms", "min {min:.4g}, median {median:.4g}, max {max:.4g}".format(**summary["norms"]))
    table.add_row("size", f"{fmt_bytes(summary['bytes'])} raw, {fmt_bytes(summary['bytes_stored'])} on disk")
    if coll.provenance:
        table.add_row("provenance", _esc(json.dumps(coll.provenance, default=str)[:300]))
    out.print(table)
    if summary["runs"]:
        runs = Table(title="runs", title_justify="left")
        for col in ("run id", "created", "mode", "rank", "eps", "method", "compressed", "report"):
            runs.add_column(col)
        for r in summary["runs"]:
            runs.add_row(_esc(r["run_id"] + ("" if r["current"] else " (stale)")), _esc(r["created"]), _esc(r["mode"]),
                         _esc(r["params"]["rank"]), _esc(r["params"]["eps"]), _esc(r["params"]["method"]),
                         "yes" if r["compressed"] else "no",
                         "yes" if r["report"] else "no")
        out.print(runs)


def _finish_compressed(coll, run_id: str, report: dict, urls: dict, html: bool, as_json: bool, title: str) -> None:
    """Write report.html, print the summary (or its JSON) and exit 1 if a group is above eps."""
    files = {"report.json": urls["report"]}
    if html:
        files["report.html"] = _write_html(coll, run_id, report)
    summary = _summary_from_report(report, files)
    summary["artifact_label"] = report.get("artifact_label")
    if as_json:
        _print_json(summary)
    else:
        _print_summary(summary, title)
    _guarantee_exit(summary)


@_command("cluster")
def cluster_cmd(
    collection: str = typer.Argument(..., help="Collection name."),
    store: str = StoreOpt,
    rank: int = _spec_option("rank", "--rank", "-r", help="Shared basis rank r of every group."),
    eps: float = _spec_option("eps", "--eps", "-e", help="Certified bound on every group's relative rank-r error, in (0, 1)."),
    method: Method = typer.Option(Method(ClusteringParams.default("method")), help="Certified lower bound used while groups grow."),
    order: Order = typer.Option(Order(ClusteringParams.default("order")), help="Candidate order: residual against the seed basis, or norm."),
    oversampling: int = _spec_option("oversampling", "--oversampling", help="Extra sketch directions p (method approximate)."),
    patience: int = _spec_option("patience", "--patience", help="Groups in a row without an accepted candidate before the rest become single blocks."),
    shard_size: int = _spec_option("shard_size", "--shard-size", help="Distributed: most blocks per shard of the local stage."),
    sequential: bool = typer.Option(False, "--sequential", help="The paper's sequential greedy on the collection loaded in memory."),
    max_memory_gib: float = typer.Option(2.0, "--max-memory-gib", help="--sequential: refuse collections needing more memory than this."),
    scheduler: Optional[str] = SchedulerOpt,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id; re-using one resumes the run. Default: derived from the collection and the parameters."),
    compress: bool = typer.Option(True, "--compress/--no-compress", help="Also write the compressed artifact (else: 'cmsvd compress' later)."),
    html: bool = typer.Option(True, "--html/--no-html", help="Write report.html beside report.json."),
    as_json: bool = JsonOpt,
) -> None:
    """Cluster a collection into groups with a certified error <= eps (distributed by default)."""
    _check_eps(eps)
    _check_names(collection_name=collection, run_id=run_id)
    coll = _open_collection(store, collection)
    bars = StageBars(quiet=as_json)
    if sequential:
        params = _sequential_params(rank, eps, method.value, order.value, oversampling, patience)
        run_id = run_id or _sequential_run_id(coll, params)
        with bars:
            run = _sequential_cluster(coll, params, run_id, max_memory_gib, bars)
            if not compress:
                arrays, meta = run.load_stage("sequential")
                summary = {"run_id": run_id, "collection": coll.name, "groups": int(meta["n_groups"]),
                           "max_bound": float(arrays["bounds"].max(initial=0.0)), "compressed": False}
            else:
                _sequential_compress(coll, run, max_memory_gib, bars)
                result = _sequential_result(coll, run)
        if compress:
            report, urls = _write_run_report(coll, result)
    else:
        cparams = _cluster_params(store, collection, rank, eps, method, order, oversampling, patience, shard_size, run_id)
        from flows._run import default_run_id
        from pipeline.distributed import ClusteringRun

        run_kwargs = cparams.pipeline_kwargs()
        run_id = run_id or default_run_id(coll, run_kwargs)
        with bars, _DaskClient(scheduler) as client:
            run = ClusteringRun(coll, **run_kwargs, client=client, run_id=run_id, progress=bars)
            if compress:
                result = run.result()
            else:
                certified = run.certify()
                errors = certified["errors"]
                summary = {"run_id": run_id, "collection": coll.name, "groups": int(len(certified["group_offsets"]) - 1),
                           "max_certified_error": float(errors.max(initial=0.0)), "compressed": False}
        if compress:
            report, urls = _write_run_report(coll, result)
    if not compress:
        if as_json:
            _print_json(summary)
        else:
            _out().print(f"clustered {coll.name} into {summary['groups']} groups (run {run_id}); "
                         f"write the artifact with: cmsvd compress {coll.name} --run-id {run_id}", markup=False)
        return
    _finish_compressed(coll, run_id, report, urls, html, as_json,
                       f"cmsvd cluster {coll.name}" + (" (sequential)" if sequential else ""))


@_command("compress")
def compress_cmd(
    collection: str = typer.Argument(..., help="Collection name."),
    run_id: str = typer.Option(..., "--run-id", help="The run to compress (see 'cmsvd inspect COLLECTION')."),
    store: str = StoreOpt,
    scheduler: Optional[str] = SchedulerOpt,
    max_memory_gib: float = typer.Option(2.0, "--max-memory-gib", help="Sequential runs: memory budget."),
    html: bool = typer.Option(True, "--html/--no-html"),
    as_json: bool = JsonOpt,
) -> None:
    """Write the compressed artifact of a run (finishing any missing stage) and its report."""
    _check_names(collection_name=collection, run_id=run_id)
    coll = _open_collection(store, collection)
    record = _run_record(coll, run_id)
    bars = StageBars(quiet=as_json)
    if record.get("params", {}).get("mode") == "sequential":
        import storage

        run = storage.open_run(coll.url, coll.name, run_id, record["params"], coll.fingerprint(), storage_options=coll.storage_options)
        if not run.is_complete("sequential"):
            raise CLIError(f"run {run_id!r} has no complete clustering; run 'cmsvd cluster --sequential' again", EXIT_MISSING)
        with bars:
            _sequential_compress(coll, run, max_memory_gib, bars)
        result = _sequential_result(coll, run)
    else:
        with bars, _DaskClient(scheduler) as client:
            result = _distributed_result(coll, run_id, client, bars)
    report, urls = _write_run_report(coll, result)
    _finish_compressed(coll, run_id, report, urls, html, as_json, f"cmsvd compress {coll.name}")


def _block_index(coll, block: str) -> int:
    """Index of a block given by index (out of range: a usage error, exit 2) or name (a
    missing name exits 3, as documented for anything missing)."""
    if block.lstrip("-").isdigit():
        i = int(block)
        if not 0 <= i < coll.n_blocks:
            raise CLIError(f"block index {i} out of range: collection {coll.name!r} has {coll.n_blocks} blocks")
        return i
    try:
        return coll.names.index(block)
    except ValueError:
        raise CLIError(f"no block named {block!r} in collection {coll.name!r}", EXIT_MISSING) from None


def _safe_file_name(name: str) -> str:
    """A block or tensor name as one file name (names are labels, not paths)."""
    out = "".join(ch if ch.isalnum() or ch in "._-[]:" else "_" for ch in name).replace(":", "_").lstrip(".")
    return out[:200] or "block"


def _save_npy(path: Path, array) -> Path:
    import numpy as np

    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


def _decompress_all(coll, artifact, output: Optional[Path], columns: bool, as_json: bool) -> dict:
    """The whole collection back: a safetensors source as a safetensors file (passthrough
    tensors byte for byte), anything else (or --columns) as one .npy per block."""
    layout = artifact.source_layout or {}
    is_st = layout.get("format") == "safetensors" and artifact.tensor_names and not columns
    output = output or Path(f"{coll.name}-decompressed")
    if output.suffix == ".safetensors":
        if not is_st:
            raise CLIError(f"collection {coll.name!r} was not ingested from a safetensors file (or --columns was "
                           "given): -o must be a folder for one .npy per block")
        target = output
    elif output.suffix:
        raise CLIError(f"--all writes a folder or a .safetensors file, not {output.suffix!r}: -o DIR or -o FILE.safetensors")
    else:
        target = output / (layout.get("file_name") or f"{coll.name}.safetensors") if is_st else None
    bars = StageBars(quiet=as_json)
    info: dict[str, Any] = {"collection": coll.name, "artifact": artifact.label}
    with bars:
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            bars("decompress", 0, 1)
            info.update(artifact.export_safetensors(target))
            bars("decompress", 1, 1)
            info["format"] = "safetensors"
        else:
            output.mkdir(parents=True, exist_ok=True)
            files = []
            for i in range(artifact.n_blocks):
                bars("decompress", i, artifact.n_blocks)
                files.append(str(_save_npy(output / f"{i:06d}-{_safe_file_name(coll.names[i])}.npy", artifact.decompress(i))))
            bars("decompress", artifact.n_blocks, artifact.n_blocks)
            info.update({"format": "npy", "path": str(output), "blocks": len(files)})
    return info


@_command("decompress")
def decompress_cmd(
    collection: str = typer.Argument(..., help="Collection name."),
    block: Optional[str] = typer.Argument(None, help="Block index, block name, or (safetensors) source tensor name."),
    all_blocks: bool = typer.Option(False, "--all", help="Write the whole collection back: a safetensors source as one .safetensors file (every tensor, passthrough ones byte for byte), else one .npy per block."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="One block: .npy file (default <collection>-<index>.npy). --all: a folder or FILE.safetensors (default ./<collection>-decompressed/)."),
    columns: bool = typer.Option(False, "--columns", help="The column form (rows x n, collection dtype) instead of the source tensor's shape and dtype."),
    run_id: Optional[str] = RunIdOpt,
    store: str = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Reconstruct a block or tensor (U_C V_i) from the compressed artifact, in its source
    shape and dtype by default; --all writes the whole collection back."""
    import storage

    _check_names(collection_name=collection, run_id=run_id)
    if (block is None) == (not all_blocks):
        raise CLIError("give a BLOCK (index or name) or --all, not both" if block is not None else
                       "give a BLOCK (index, block name or tensor name) or --all")
    coll = _open_collection(store, collection)
    label = _resolve_run_id(coll, run_id)
    artifact = storage.open_artifact(store, collection, label, storage_options=coll.storage_options)
    if all_blocks:
        info = _decompress_all(coll, artifact, output, columns, as_json)
        if as_json:
            _print_json(info)
        else:
            what = (f"{info['tensors']} tensors ({info['passthrough']} kept as they are)" if info["format"] == "safetensors"
                    else f"{info['blocks']} blocks as .npy")
            _out().print(_esc(f"{collection}: {what} -> {info['path']}"))
        return
    tensor = None
    if block not in coll.names and block in artifact.tensor_names:
        tensor = block  # a source tensor: a --per column one spans many blocks, a passthrough one none
    if tensor is not None:
        t = artifact.tensor_info(tensor)
        approx = artifact.tensor(tensor, form="columns" if columns else "original")
        output = _save_npy(output or Path(f"{collection}-{_safe_file_name(tensor)}.npy"), approx)
        info = {"collection": collection, "artifact": label, "tensor": tensor, "source_dtype": t["dtype"],
                "source_shape": t["shape"], "shape": list(approx.shape), "dtype": str(approx.dtype),
                "form": "columns" if columns else "original", "stored_raw": t["kind"] == "passthrough",
                "passthrough": t["kind"] == "passthrough", "output": str(output)}
        if t["kind"] != "passthrough":
            first, count = t["blocks"]
            info["blocks"] = list(range(first, first + count))
        if as_json:
            _print_json(info)
        else:
            kept = f", kept as it is: {t.get('reason')}" if t["kind"] == "passthrough" else ""
            _out().print(_esc(f"tensor {tensor} {tuple(approx.shape)} {approx.dtype} -> {output}{kept}"))
        return
    i = _block_index(coll, block)
    approx = artifact.decompress(i, form="columns" if columns else "original")
    output = _save_npy(output or Path(f"{collection}-{i}.npy"), approx)
    g = int(artifact.labels[i])
    info = {"collection": collection, "artifact": label, "block": i, "name": coll.names[i], "shape": list(approx.shape),
            "dtype": str(approx.dtype), "form": "columns" if columns else "original", "group": g,
            "group_rank": int(artifact.ranks[g]), "stored_raw": bool(artifact.kinds[g] == 1),
            "group_error": float(artifact.errors[g]), "output": str(output)}
    if as_json:
        _print_json(info)
    else:
        _out().print(_esc(f"block {i} ({info['name']}) {tuple(approx.shape)} {approx.dtype} -> {output} "
                          f"(group {g}, {'stored raw' if info['stored_raw'] else 'rank ' + str(info['group_rank'])}, "
                          f"group error {info['group_error']:.4g})"))


@_command("verify")
def verify_cmd(
    collection: str = typer.Argument(..., help="Collection name."),
    run_id: Optional[str] = RunIdOpt,
    store: str = StoreOpt,
    eps: Optional[float] = typer.Option(None, "--eps", help="Threshold to check against (default: the run's eps)."),
    as_json: bool = JsonOpt,
) -> None:
    """Recompute the exact per-group errors from the collection and the artifact.

    Exit 1 if any group exceeds eps or disagrees with the recorded error, 4 if the
    artifact's hashes do not match (corrupted files).
    """
    import storage
    from pipeline.distributed.verify import verify_artifact

    if eps is not None:
        _check_eps(eps)
    _check_names(collection_name=collection, run_id=run_id)
    coll = _open_collection(store, collection)
    label = _resolve_run_id(coll, run_id)
    artifact = storage.open_artifact(store, collection, label)
    bars = StageBars(quiet=as_json)
    with bars:
        result = verify_artifact(coll, artifact, eps, bars)
    if as_json:
        _print_json(result)
    else:
        from rich.text import Text

        status = _esc("verified", "green") if result["ok"] else _esc("FAILED", "red")
        _out().print(Text.assemble(status, _esc(
            f": artifact {label} of {collection}: hashes match; {result['groups']} groups, "
            f"worst recomputed error {result['max_error']:.6g} (eps = {result['eps']}); "
            f"{len(result['violations'])} above eps, {len(result['mismatches'])} differing from the recorded errors"
        )))
    if not result["ok"]:
        what = (f"group(s) {result['violations'][:10]} exceed eps = {result['eps']}" if result["violations"]
                else f"group(s) {result['mismatches'][:10]} differ from their recorded errors")
        sys.stderr.write(f"error: verification failed: {what}\n")
        raise typer.Exit(EXIT_FAILED)


@_command("report")
def report_cmd(
    collection: str = typer.Argument(..., help="Collection name."),
    run_id: Optional[str] = RunIdOpt,
    store: str = StoreOpt,
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Comma-separated eps values: also plot compression ratio against eps (runs a clustering per value)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also copy report.json and report.html into this folder."),
    scheduler: Optional[str] = SchedulerOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Write report.json (if missing) and report.html of a run; --json prints report.json."""
    sweep_eps = _parse_floats(sweep, "'--sweep'")
    _check_names(collection_name=collection, run_id=run_id)
    coll = _open_collection(store, collection)
    run_id = _resolve_run_id(coll, run_id)
    record = _run_record(coll, run_id)
    sequential = record.get("params", {}).get("mode") == "sequential"
    if sweep_eps and sequential:  # refused up front, whether or not report.json exists yet
        raise CLIError("--sweep needs a distributed run (sequential runs keep the collection in memory)")
    report = _read_report(coll, run_id)
    if report is not None and report.get("run_id") != run_id:
        from storage import short_repr

        # the folder names the run; an edited report.json must not redirect any output
        _err().print(_esc(f"warning: report.json of run {run_id} names run {short_repr(report.get('run_id'))}: "
                          f"using {run_id}"))
        report = {**report, "run_id": run_id}
    if report is not None and "max_certified_error_compressed" not in report:
        report = None  # written by an older cmsvd (rank of raw groups, unlabelled errors): rebuild it
    bars = StageBars(quiet=as_json)
    sweep_rows = None
    if report is None or sweep_eps:
        if sequential:
            import storage

            run = storage.open_run(coll.url, coll.name, run_id, record["params"], coll.fingerprint(), storage_options=coll.storage_options)
            if not run.is_complete("compress"):
                raise CLIError(f"run {run_id!r} is not compressed yet: cmsvd compress {collection} --run-id {run_id}", EXIT_MISSING)
            report, _ = _write_run_report(coll, _sequential_result(coll, run))
        else:
            from flows._run import stored_run_params

            with bars, _DaskClient(scheduler) as client:
                if report is None:
                    from pipeline.distributed import ClusteringRun

                    run = ClusteringRun(coll, **stored_run_params(coll, run_id), client=client, run_id=run_id, progress=bars)
                    if not run.run.is_complete("compress"):
                        raise CLIError(f"run {run_id!r} is not compressed yet: cmsvd compress {collection} --run-id {run_id}", EXIT_MISSING)
                    report, _ = _write_run_report(coll, run.result())
                if sweep_eps:
                    sweep_rows = _sweep(coll, stored_run_params(coll, run_id), sweep_eps, client, bars)
                    sweep_rows = _with_run_point(sweep_rows, report)
    html_url = _write_html(coll, run_id, report, sweep=sweep_rows)
    json_url = f"{_run_url(coll, run_id)}/report.json"
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "report.json").write_text(json.dumps(report, indent=1))
        import storage

        (output / REPORT_HTML).write_bytes(storage.read_run_bytes(coll, run_id, REPORT_HTML))
        json_url, html_url = str(output / "report.json"), str(output / REPORT_HTML)
    if as_json:
        _print_json(report)
        return
    summary = _summary_from_report(report, {"report.json": json_url, "report.html": html_url})
    _print_summary(summary, f"cmsvd report {collection}")


def _with_run_point(rows: list[dict], report: dict) -> list[dict]:
    """The sweep rows plus the run's own point (from its report.json) when no row has its eps."""
    from flows.html_report import honest_numbers

    eps = report["params"].get("eps")
    if eps is None or any(abs(r["eps"] - eps) <= 1e-12 for r in rows):
        return rows
    honest = honest_numbers(report)
    multi = [g["error"] for g in report["groups"] if len(g["blocks"]) > 1]
    return rows + [{"eps": float(eps), "run_id": report.get("run_id"), "groups": len(report["groups"]),
                    "compression_ratio": report["compression_ratio"],
                    "compression_ratio_adaptive": report["compression_ratio_adaptive"],
                    "raw_blocks": honest["raw_blocks"],
                    "max_certified_error_compressed": honest["max_certified_error_compressed"],
                    "max_error": max(multi, default=0.0)}]


@_command("study")
def study_cmd(
    collection: str = typer.Argument(..., help="Collection name."),
    store: str = StoreOpt,
    rank: int = _spec_option("rank", "--rank", "-r"),
    sizes: str = typer.Option("2:20:3", "--sizes", help="Group sizes: start:stop[:step] (stop included) or a comma list."),
    trials: int = typer.Option(5, "--trials", min=1, help="Random groups per size."),
    oversampling: int = _spec_option("oversampling", "--oversampling"),
    seed: int = typer.Option(0, "--seed", min=0),
    output: Path = typer.Option(Path("study.csv"), "--output", "-o", help="CSV file (one row per random group)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG plot (default: the CSV path with .png)."),
    max_memory_gib: float = typer.Option(2.0, "--max-memory-gib"),
    as_json: bool = JsonOpt,
) -> None:
    """The paper's error-estimation study: every certified bound against the exact error."""
    import csv

    from pipeline.study import STUDY_COLUMNS, error_estimation_study

    size_list = _parse_sizes(sizes)
    _check_names(collection_name=collection)
    coll = _open_collection(store, collection)
    if max(size_list) > coll.n_blocks:
        raise CLIError(f"group size {max(size_list)} exceeds the {coll.n_blocks} blocks of {collection!r}")
    bars = StageBars(quiet=as_json)
    with bars:
        bars("load", 0, 1)
        layout = _load_in_memory(coll, max_memory_gib, "the study")
        bars("load", 1, 1)
        rows = []
        for k, size in enumerate(size_list):
            rows += error_estimation_study(layout, rank=rank, sizes=[size], trials=trials, oversampling=oversampling,
                                           seed=seed + k)
            bars("study", k + 1, len(size_list))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(STUDY_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    plot_path = None
    from flows.html_report import have_matplotlib, study_png

    if have_matplotlib():
        plot_path = plot or output.with_suffix(".png")
        plot_path.write_bytes(study_png(rows, rank))
    bound_cols = [c for c in STUDY_COLUMNS if c not in ("size", "trial", "exact")]
    violations = {c: sum(1 for r in rows if r[c] < r["exact"] - 1e-9) for c in bound_cols}
    summary = {"collection": collection, "rank": rank, "sizes": size_list, "trials": trials, "rows": len(rows),
               "csv": str(output), "plot": str(plot_path) if plot_path else None,
               "mean_gap": {c: float(sum(r[c] - r["exact"] for r in rows) / len(rows)) for c in bound_cols},
               "violations": violations}
    if as_json:
        _print_json(summary)
    else:
        from rich.table import Table

        table = Table(title=_esc(f"bound - exact error, {len(rows)} random groups of {collection} (r = {rank})"), title_justify="left")
        table.add_column("bound")
        table.add_column("mean gap", justify="right")
        table.add_column("bound < exact", justify="right")
        for c in bound_cols:
            table.add_row(_esc(c), f"{summary['mean_gap'][c]:.4g}", str(violations[c]))
        _out().print(table)
        _out().print(f"CSV: {output}" + (f"   plot: {plot_path}" if plot_path else "   (no plot: matplotlib is not installed)"),
                     markup=False)
    if any(violations.values()):
        sys.stderr.write("error: a certified bound was below the exact error\n")
        raise typer.Exit(EXIT_FAILED)


def _run_flow(coll, cparams, bars: StageBars, scheduler: str | None = None) -> dict:
    """The cmsvd-cluster Prefect flow, followed by polling its run folder for progress."""
    from flows.cluster import cluster as cluster_flow

    watcher = RunFolderWatcher(_run_url(coll, cparams.run_id), coll.storage_options, bars)
    watcher.start()
    try:
        with _flow_scheduler(scheduler):
            state = cluster_flow(params=cparams, return_state=True)
    finally:
        watcher.stop()
    if not state.is_completed():
        exc = None
        try:
            state.result()
        except BaseException as e:  # noqa: BLE001 - re-raised with its own type below
            exc = e
        if exc is not None:
            raise exc
        raise CLIError(f"the cmsvd-cluster flow ended in state {state.name}: {state.message}", EXIT_INTERNAL)
    return state.result()


@_command("run")
def run_cmd(
    collection: str = typer.Argument(..., help="Collection name."),
    store: str = StoreOpt,
    source: Optional[str] = typer.Option(None, "--source", help="Ingest this file or folder first (cmsvd-ingest flow)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --source: replace an existing collection."),
    rank: int = _spec_option("rank", "--rank", "-r"),
    eps: float = _spec_option("eps", "--eps", "-e", help="Certified error bound in (0, 1)."),
    method: Method = typer.Option(Method(ClusteringParams.default("method"))),
    order: Order = typer.Option(Order(ClusteringParams.default("order"))),
    oversampling: int = _spec_option("oversampling", "--oversampling"),
    patience: int = _spec_option("patience", "--patience"),
    shard_size: int = _spec_option("shard_size", "--shard-size"),
    scheduler: Optional[str] = SchedulerOpt,
    run_id: Optional[str] = typer.Option(None, "--run-id", help="Run id; re-using one resumes the run."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Comma-separated eps values for the compression-vs-eps plot."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect and Dask logs."),
    as_json: bool = JsonOpt,
) -> None:
    """The whole Prefect flow (optionally ingest, then cluster, compress and report) and report.html.

    The cmsvd-cluster flow runs scan -> partition -> local -> merge -> certify -> compress ->
    report as Prefect tasks, checkpointed in the run folder and resumable.  Uses PREFECT_API_URL when set (the run shows on the dashboard), else a temporary local API.
    """
    _check_eps(eps)
    sweep_eps = _parse_floats(sweep, "'--sweep'")
    _check_names(collection_name=collection, run_id=run_id)
    _quiet_environment(verbose)
    result = _flow_pipeline(store, collection, source, overwrite, rank, eps, method, order, oversampling, patience,
                            shard_size, scheduler, run_id, sweep_eps, as_json)
    if as_json:
        _print_json(result)
    else:
        _print_summary(result, f"cmsvd run {collection}")
    _guarantee_exit(result)


def _flow_pipeline(store, collection, source, overwrite, rank, eps, method, order, oversampling, patience, shard_size,
                   scheduler, run_id, sweep_eps, quiet, ingest_params: dict | None = None) -> dict:
    """(ingest ->) cluster flow -> report.html (-> sweep); returns the summary dict."""
    bars = StageBars(quiet=quiet)
    timings_cli: dict[str, float] = {}
    with bars:
        if source is not None or ingest_params is not None:
            start = time.perf_counter()
            bars("ingest", 0, 1)
            if ingest_params is not None:
                from flows.ingest import demo_data
                from flows.params import DemoParameters

                demo_data(params=DemoParameters(store_url=store, collection=collection, **ingest_params))
            else:
                from flows.ingest import ingest
                from flows.params import IngestParameters

                ingest(params=IngestParameters(store_url=store, collection=collection, source=source, overwrite=overwrite))
            bars("ingest", 1, 1)
            timings_cli["ingest"] = time.perf_counter() - start
        coll = _open_collection(store, collection)
        cparams = _cluster_params(store, collection, rank, eps, method, order, oversampling, patience, shard_size, run_id)
        if cparams.run_id is None:
            from flows._run import default_run_id

            cparams = cparams.model_copy(update={"run_id": default_run_id(coll, cparams.pipeline_kwargs())})
        start = time.perf_counter()
        flow_summary = _run_flow(coll, cparams, bars, scheduler)
        timings_cli["flow"] = time.perf_counter() - start
        report = _read_report(coll, cparams.run_id)
        if report is None:
            raise CLIError(f"the flow finished without report.json at {flow_summary.get('report_url')}", EXIT_INTERNAL)
        sweep_rows = None
        if sweep_eps:
            others = [e for e in sweep_eps if abs(e - eps) > 1e-12]
            with _DaskClient(scheduler) as client:
                sweep_rows = _sweep(coll, cparams.pipeline_kwargs(), others, client, bars) if others else []
            here = report
            sweep_rows.append({"eps": float(eps), "run_id": cparams.run_id, "groups": len(here["groups"]),
                               "compression_ratio": here["compression_ratio"],
                               "compression_ratio_adaptive": here["compression_ratio_adaptive"],
                               "max_error": max((g["error"] for g in here["groups"] if len(g["blocks"]) > 1), default=0.0)})
        bars("html", 0, 1)
        html_url = _write_html(coll, cparams.run_id, report, sweep=sweep_rows)
        bars("html", 1, 1)
    summary = _summary_from_report(report, {"report.json": f"{_run_url(coll, cparams.run_id)}/report.json",
                                            "report.html": html_url})
    summary["artifact_label"] = report.get("artifact_label")
    summary["store"] = store
    summary["cli_seconds"] = {k: round(v, 3) for k, v in timings_cli.items()}
    if sweep_rows:
        summary["sweep"] = sorted(sweep_rows, key=lambda r: r["eps"])
    return summary


@_command("demo")
def demo_cmd(
    store: str = typer.Option(DEFAULT_DEMO_STORE, "--store", "-s", help="Folder (or URL) of the demo store."),
    blocks: int = typer.Option(20000, "--blocks", min=10, help="Blocks in the generated collection."),
    rows: int = typer.Option(256, "--rows", min=4, help="Rows m of every block."),
    width: int = typer.Option(4, "--width", min=1, help="Columns of every block."),
    rank: int = _spec_option("rank", "--rank", "-r", default=16),  # the demo's data: rank-3 subspaces, noise 0.02
    eps: float = _spec_option("eps", "--eps", "-e", default=0.05),
    sweep: Optional[str] = typer.Option("0.02,0.1,0.2", "--sweep", help="Other eps values for the compression-vs-eps plot ('' to skip)."),
    scheduler: Optional[str] = SchedulerOpt,
    fresh: bool = typer.Option(False, "--fresh", help="Regenerate the collection and recompute every stage."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect and Dask logs."),
    as_json: bool = JsonOpt,
) -> None:
    """Generate a demo collection, run the whole flow on it and write the report.

    Local Dask cluster, local Zarr store (./cmsvd-demo), Prefect without a server.  A second
    run reuses the generated collection and the checkpoints; --fresh starts over."""
    _check_eps(eps)
    sweep_eps = _parse_floats(sweep, "'--sweep'")
    from flows.demo import DEMO_COLLECTION, demo_ingest_params, prepare_demo_store

    root = prepare_demo_store(store, fresh=fresh)
    prefect_home = Path(store) / ".prefect" if "://" not in store else None
    _quiet_environment(verbose, prefect_home)
    started = time.perf_counter()
    params = demo_ingest_params(store, blocks=blocks, rows=rows, width=width, fresh=fresh)
    if not as_json:
        from flows.html_report import fmt_bytes

        size = blocks * rows * width * 8
        _err().print(_esc(
            f"cmsvd demo: {blocks} blocks of {rows} x {width} ({fmt_bytes(size)}) from a union of low-rank subspaces "
            f"plus noise, rank {rank}, eps {eps}; store {root}"
            + ("" if params is not None else " (collection already generated)")
        ))
    spec = ClusteringParams(rank=rank, eps=eps)  # the library's defaults for everything else
    summary = _flow_pipeline(store, DEMO_COLLECTION, None, False, rank, eps, Method(spec.method), Order(spec.order),
                             spec.oversampling, spec.patience, spec.shard_size, scheduler, None, sweep_eps, as_json,
                             ingest_params=params)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        _print_json(summary)
    else:
        _print_summary(summary, "cmsvd demo")
        from rich.text import Text

        _out().print(Text.assemble(
            f"done in {summary['seconds']:.0f} s. Open ", _esc(_local_path(summary["files"]["report.html"]), "bold"),
            "\n", _esc(f"next: cmsvd verify {DEMO_COLLECTION} --store {store}   |   "
                        f"cmsvd decompress {DEMO_COLLECTION} 0 -o block0.npy --store {store}   |   cmsvd --help"),
        ))
    _guarantee_exit(summary)


# ---- entry point --------------------------------------------------------------------------


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cmsvd")
    except Exception:  # noqa: BLE001 - not installed (a source checkout)
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-V"]):
        sys.stdout.write(f"cmsvd {_version()}\n")
        return EXIT_OK
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="cmsvd", standalone_mode=False)
        code = rv if isinstance(rv, int) else EXIT_OK
    except _NO_ARGS:  # type: ignore[misc]
        code = EXIT_USAGE  # typer has printed the help already
    except click.exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        sys.stderr.write(f"error: {_one_line(exc) if not hasattr(exc, 'format_message') else ' '.join(exc.format_message().split())}{hint}\n")
        code = EXIT_USAGE
    except _EXIT as exc:
        code = exc.exit_code
    except _ABORT:
        sys.stderr.write("error: aborted\n")
        code = 130
    except click.exceptions.ClickException as exc:
        sys.stderr.write(f"error: {' '.join(exc.format_message().split())}\n")
        code = exc.exit_code
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
