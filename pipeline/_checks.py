"""Up-front parameter validation shared by the public entry points."""

from __future__ import annotations

import numbers

METHODS = ("max_norm", "residuals", "approximate")
ORDERS = ("norm", "residual")


def check_rank(rank: object) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    return int(rank)


def check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 < float(eps) < 1.0:
        raise ValueError(f"eps must be a number in the open interval (0, 1), got {eps!r}")
    return float(eps)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")
    return str(value)


def check_nonnegative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_tol(tol: object) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0.0 <= float(tol) < 1.0:
        raise ValueError(f"tol must be a number in [0, 1), got {tol!r}")
    return float(tol)
