"""The Typer app of the ``cmsvd`` command line, its exit codes and error handling.

``_command`` registers a command with the error handling applied: an exception becomes
one line ``error: ...`` on stderr and an exit code (:func:`_classify`); ``main`` is the
console-script entry point.
"""

from __future__ import annotations

import errno as _errno
import functools
import json
import os
import sys
from typing import Any, Callable

import typer

try:  # recent typer vendors click: its exceptions are not the ones of the click package
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer
    import click

_EXIT = tuple({typer.Exit, *(c for c in (getattr(click.exceptions, "Exit", None),) if c)})
_ABORT = tuple({typer.Abort, *(c for c in (getattr(click.exceptions, "Abort", None),) if c)})
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING, EXIT_CORRUPT, EXIT_INTERNAL = 0, 1, 2, 3, 4, 5
DEFAULT_STORE = "./cmsvd-data"
DEFAULT_DEMO_STORE = "./cmsvd-demo"


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith(("'", '"')):
        text = text.strip("'\"")
    return " ".join(text.split())


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
