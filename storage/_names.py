"""The names the storage layer accepts: path parts (collection, run id, stage, label) and
block names.

A path part is one safe file-name component (:func:`check_name`); a block name is free text
kept in a collection's attributes but refused when it would mislead a terminal or a reader
(:func:`block_name_problem`).
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidNameError

RESERVED_NAMES = frozenset({"runs", "artifacts", "zarr.json"})  # storage._location.RUNS_DIR, ARTIFACTS_DIR
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


def check_name(name: str, what: str = "name") -> str:
    """Return *name* if it is a safe single path component, else raise.

    Parameters
    ----------
    name : str
        Candidate collection, run, stage, label or array name.
    what : str
        Word used in the error message ("collection name", "stage name"...).

    Raises
    ------
    InvalidNameError
        For path separators, ``..``, leading dots, empty or over-long names, or a
        name reserved for the storage layout.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-128 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit, without '..' or path separators"
        )
    if name in RESERVED_NAMES:
        raise InvalidNameError(f"invalid {what} {name!r}: reserved by the storage layout")
    return name


#: Longest block name accepted (names live in the collection's attributes, read whole).
MAX_BLOCK_NAME = 1024
# bidirectional overrides and isolates: they reorder what a terminal shows
_BIDI_CONTROLS = frozenset(map(chr, (*range(0x202A, 0x202F), *range(0x2066, 0x206A))))
# control (C0, DEL, C1), surrogate, line and paragraph separator characters
_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to *limit* characters, for error messages about odd names."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def block_name_problem(name: Any) -> str | None:
    """Why *name* cannot be a block name, or None if it can.

    Block names are labels in the collection's attributes, never paths, so the rule is
    wider than :func:`check_name`: the names of every supported format stay valid
    (safetensors ``layers.0.attn.weight``, npz members and HDF5 datasets with ``/``,
    ``stem[3]`` of a stacked .npy, any printable Unicode).  Refused: non-strings, empty
    names, more than :data:`MAX_BLOCK_NAME` characters, control characters (NUL, newline,
    tab, DEL, C1, U+2028/2029, bidirectional overrides), a leading ``/`` and ``.`` or
    ``..`` segments (so a name never reads as a path out of somewhere).

    Parameters
    ----------
    name : object
        Candidate block name.

    Returns
    -------
    str or None
        A short phrase naming the problem (without the name itself), e.g.
        ``control character U+000A at position 3``.
    """
    if not isinstance(name, str):
        return f"not a string but {type(name).__name__}"
    if not name:
        return "empty"
    if len(name) > MAX_BLOCK_NAME:
        return f"{len(name)} characters, at most {MAX_BLOCK_NAME} allowed"
    import unicodedata

    for pos, ch in enumerate(name):
        if ch in _BIDI_CONTROLS or unicodedata.category(ch) in _CONTROL_CATEGORIES:
            return f"control character U+{ord(ch):04X} at position {pos}"
    if name.startswith("/"):
        return "starts with '/'"
    if any(part in (".", "..") for part in name.split("/")):
        return "has a '.' or '..' path segment"
    return None


def is_safe_name(value: Any) -> bool:
    """Whether ``value`` passes :func:`check_name` (for names read back from a store)."""
    try:
        check_name(value)
    except InvalidNameError:
        return False
    return True
