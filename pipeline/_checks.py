"""Up-front parameter validation: the constraint table every entry point shares.

:data:`CONSTRAINTS` gives, in the style of scikit-learn's ``_parameter_constraints``, the
range of every clustering parameter. :class:`pipeline.params.ClusteringParams`, the
Prefect parameter models and the CLI's options take their bounds from it; the ``check_*``
helpers below apply it to single arguments of the lower-level functions.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

METHODS = ("max_norm", "residuals", "approximate")
ORDERS = ("norm", "residual")
DEFAULT_TOL = 1e-12  # relative threshold below which residual directions are dropped


@dataclass(frozen=True)
class Interval:
    """A numeric range: ``kind`` (int or float) between ``low`` and ``high`` (None: open
    ended), each end included or not."""

    kind: type
    low: float | None
    high: float | None
    low_closed: bool = True
    high_closed: bool = True

    def check(self, name: str, value: Any) -> int | float:
        exact = numbers.Integral if self.kind is int else numbers.Real
        ok = not isinstance(value, bool) and isinstance(value, exact)
        if ok and self.low is not None:
            ok = value >= self.low if self.low_closed else value > self.low
        if ok and self.high is not None:
            ok = value <= self.high if self.high_closed else value < self.high
        if not ok:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return self.kind(value)

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            left, right = ("[" if self.low_closed else "("), ("]" if self.high_closed else ")")
            return f"{what} in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"
        if self.low is not None:
            return f"{what} {'>=' if self.low_closed else '>'} {_fmt(self.low)}"
        return f"{what} {'<=' if self.high_closed else '<'} {_fmt(self.high)}"

    def bounds(self) -> dict[str, float]:
        """The bounds as pydantic/annotated-types keywords (``ge``, ``gt``, ``le``, ``lt``)."""
        out = {}
        if self.low is not None:
            out["ge" if self.low_closed else "gt"] = self.low
        if self.high is not None:
            out["le" if self.high_closed else "lt"] = self.high
        return out


@dataclass(frozen=True)
class Options:
    """One of a fixed set of strings."""

    choices: tuple[str, ...]

    def check(self, name: str, value: Any) -> str:
        value = getattr(value, "value", value)  # an Enum member of the same values
        if value not in self.choices:
            raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, self.choices))}")
        return str(value)

    def describe(self) -> str:
        return "one of " + ", ".join(map(repr, self.choices))


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:,}".replace(",", "_") if abs(x) >= 10_000 else str(x)


#: The constraint of every clustering parameter; the upper ends of the integers are
#: practical limits (a form's number input needs one), far above any useful value.
CONSTRAINTS: dict[str, Interval | Options] = {
    "rank": Interval(int, 1, 100_000),
    "eps": Interval(float, 0.0, 1.0, low_closed=False, high_closed=False),
    "method": Options(METHODS),
    "order": Options(ORDERS),
    "oversampling": Interval(int, 0, 1000),
    "patience": Interval(int, 1, 1_000_000),
    "tol": Interval(float, 0.0, 1.0, high_closed=False),
    "shard_size": Interval(int, 2, 1_000_000),
    "merge_neighbours": Interval(int, 1, 1000),
    "batch_bytes": Interval(int, 1, 2**40),
}


def check_rank(rank: object) -> int:
    return CONSTRAINTS["rank"].check("rank", rank)


def check_eps(eps: object) -> float:
    return CONSTRAINTS["eps"].check("eps", eps)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    return Options(choices).check(name, value)


def check_nonnegative_int(name: str, value: object) -> int:
    return Interval(int, 0, None).check(name, value)


def check_positive_int(name: str, value: object) -> int:
    return Interval(int, 1, None).check(name, value)


def check_tol(tol: object) -> float:
    return CONSTRAINTS["tol"].check("tol", tol)
