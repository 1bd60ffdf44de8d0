"""Flow parameters as pydantic models.

Prefect turns these models into the deployment's OpenAPI parameter schema, so the
dashboard renders a form with descriptions, bounds and defaults.  A deployment with
``enforce_parameter_schema`` refuses a bad value (eps = 1.5, rank = 0, an unknown
method...) when the run is *created*; but the dashboard's "Validate parameters" switch
and the REST API's ``enforce_parameter_schema: false`` turn that check off for one run,
so every flow also validates its parameters itself, first thing, with
:func:`validate_params` (every bad field named on one line, before any Dask cluster).

Descriptions are plain text: the dashboards render ``<...>`` as HTML tags and show
backticks literally, so neither appears in a field or model description (the model
docstrings below are what the form shows as section descriptions).

``extra="forbid"`` everywhere: a misspelt field is an error, not a silently ignored
default.

What a run may touch is the worker's decision, not the run's:

- ``store_url`` and ``source`` must lie under one of the roots listed in the worker's
  ``CMSVD_ALLOWED_ROOTS`` (comma-separated local paths or URL prefixes such as
  ``/data,s3://cmsvd``); unset or blank, any location is accepted (the local embedded
  default: one user, their own files).  The check is part of the model, so it runs
  where the parameters are validated: at flow start, in the worker.
- The Dask scheduler comes from the worker's ``CMSVD_DASK_SCHEDULER`` /
  ``DASK_SCHEDULER_ADDRESS``, never from a parameter: a run could otherwise send the
  worker to a scheduler that feeds it pickled data.  A non-empty ``scheduler_address``
  is refused by name (an empty one, from an older form, is ignored).
"""

from __future__ import annotations

import enum
import os
from typing import Annotated, Any, TypeVar

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from pipeline.params import ClusteringParams

__all__ = [
    "NAME_PATTERN",
    "ALLOWED_ROOTS_ENV",
    "allowed_roots",
    "root_problem",
    "Method",
    "Order",
    "DType",
    "StoreParameters",
    "ClusterParameters",
    "IngestParameters",
    "RunParameters",
    "DemoParameters",
    "InvalidParameters",
    "validate_params",
    "describe_errors",
    "range_text",
]

#: Same rule as ``storage`` applies to collection and run names (one safe path part).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"


def _storage_name(value: str | None, info: Any) -> str | None:
    """The storage name check (``storage.check_name``) on top of the pattern.

    The pattern is what the dashboard form can show; storage also refuses ``..`` inside a
    name and the reserved names (``runs``, ``artifacts``...).  One rule for the CLI, the
    flows and storage, so a run id is checked identically wherever it comes from.
    """
    if value is None:
        return None
    from storage import check_name  # lazy: keeps `cmsvd --help` fast

    check_name(value, str(info.field_name).replace("_", " "))  # InvalidNameError is a ValueError
    return value


#: A collection name or run id: one safe path component of the store.
SafeName = Annotated[str, StringConstraints(pattern=NAME_PATTERN), AfterValidator(_storage_name)]

#: Worker environment variable: comma-separated roots that stores and sources must lie under.
ALLOWED_ROOTS_ENV = "CMSVD_ALLOWED_ROOTS"


def allowed_roots(environ: dict[str, str] | None = None) -> list[str] | None:
    """The roots of ``CMSVD_ALLOWED_ROOTS``, or None when it is unset or blank (no limit).

    Parameters
    ----------
    environ : mapping, optional
        Default: ``os.environ`` (the worker's environment at validation time).
    """
    raw = (os.environ if environ is None else environ).get(ALLOWED_ROOTS_ENV, "")
    roots = [r.strip() for r in raw.split(",") if r.strip()]
    return roots or None


def _location_parts(url: str) -> tuple[str, tuple[str, ...]] | str:
    """``(protocol, path segments)`` of a local path or URL, or a problem phrase.

    Local paths (and ``file://``) are made absolute and resolved (symlinks, ``..``) as
    the worker would open them; other URLs are compared segment by segment and may not
    contain ``.`` or ``..`` segments (an object store would not resolve them, a
    filesystem behind fsspec might).
    """
    text = url.strip()
    protocol, sep, rest = text.partition("://")
    if not sep or protocol.lower() in ("file", "local"):
        path = rest if sep else text
        return "file", tuple(p for p in os.path.realpath(os.path.expanduser(path)).split(os.sep) if p)
    protocol = {"s3a": "s3"}.get(protocol.lower(), protocol.lower())
    parts = tuple(p for p in rest.split("/") if p)
    if any(p in (".", "..") for p in parts) or "\\" in rest:
        return "has a '.', '..' or backslash path segment"
    return protocol, parts


def root_problem(url: str, roots: list[str] | None = None) -> str | None:
    """Why *url* is outside the allowed roots, or None when it is inside one.

    Parameters
    ----------
    url : str
        A store root or ingest source, as given in the run's parameters.
    roots : list of str, optional
        Allowed roots; default :func:`allowed_roots` (None: everything is allowed).

    Returns
    -------
    str or None
        A phrase such as ``'/etc' is outside the allowed roots (CMSVD_ALLOWED_ROOTS:
        /data, s3://cmsvd)``.
    """
    roots = allowed_roots() if roots is None else roots
    if not roots:
        return None
    where = f"{ALLOWED_ROOTS_ENV}: {', '.join(roots)}"
    value = _location_parts(url)
    if isinstance(value, str):
        return f"{_short(url, 200)} {value} ({where})"
    for root in roots:
        allowed = _location_parts(root)
        if isinstance(allowed, tuple) and allowed[0] == value[0] and value[1][: len(allowed[1])] == allowed[1]:
            return None
    return f"{_short(url, 200)} is outside the allowed roots ({where})"


def _within_roots(value: str) -> str:
    problem = root_problem(value)
    if problem:
        raise ValueError(problem)
    return value


#: Largest seed accepted (numpy's legacy seeding range; the form needs a finite maximum).
_MAX_SEED = 2**32 - 1


class Method(str, enum.Enum):
    """Lower bound used to certify a group's error while it grows (M. Shamrai,
    arXiv 2601.11626; the README's table of bounds)."""

    approximate = "approximate"
    residuals = "residuals"
    max_norm = "max_norm"


class Order(str, enum.Enum):
    """Order in which candidate blocks are offered to a growing group."""

    residual = "residual"
    norm = "norm"


class DType(str, enum.Enum):
    """Storage dtype of a collection."""

    float32 = "float32"
    float64 = "float64"


def _fmt(x: float) -> str:
    """0.0 -> 0, 1e6 -> 1000000, 0.02 -> 0.02 (no exponents in the form)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def range_text(ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None) -> str:
    """Words for a numeric range, e.g. ``1 to 100000`` or ``more than 0 and less than 1``.

    Words rather than ``<``/``>`` signs: the dashboard would read ``<`` as a tag.
    """
    low = f"at least {_fmt(ge)}" if ge is not None else (f"more than {_fmt(gt)}" if gt is not None else "")
    high = f"at most {_fmt(le)}" if le is not None else (f"less than {_fmt(lt)}" if lt is not None else "")
    if ge is not None and le is not None:
        return f"{_fmt(ge)} to {_fmt(le)}"
    return " and ".join(p for p in (low, high) if p) or "any number"


def _spec(name: str, description: str) -> Any:
    """A Field whose default and bounds come from ``pipeline.params.ClusteringParams``: the
    one constraint table the library, the CLI and these forms share."""
    return _number(ClusteringParams.default(name), description, **ClusteringParams.constraints[name].bounds())


def _number(default: Any, description: str, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A Field for a bounded number whose description states its range and default.

    Every numeric field has both a lower and an upper bound, so that the form's number
    input gets ``min``/``max``.  Exclusive bounds are also given as inclusive
    ``minimum``/``maximum`` (implied by the exclusive ones) because the dashboard only
    passes those two to the input element.
    """
    if (ge is None and gt is None) or (le is None and lt is None):
        raise TypeError("a numeric parameter needs a lower and an upper bound")
    shown = "empty" if default is None else _fmt(default)
    text = f"{description} Range: {range_text(ge, gt, le, lt)}. Default: {shown}."
    extra = {}
    if gt is not None:
        extra["minimum"] = gt
    if lt is not None:
        extra["maximum"] = lt
    return Field(default=default, ge=ge, gt=gt, le=le, lt=lt, description=text, json_schema_extra=extra or None)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


_SCHEDULER_REFUSED = (
    "not a run parameter: the worker's CMSVD_DASK_SCHEDULER (or DASK_SCHEDULER_ADDRESS) "
    "chooses the Dask scheduler"
)


class _NoScheduler(_Model):
    """Models of flows that use Dask: the scheduler is the worker's, not the run's."""

    @model_validator(mode="before")
    @classmethod
    def _drop_blank_scheduler(cls, data: Any) -> Any:
        # older deployment forms submit the removed field empty: harmless, so ignored;
        # a real address stays and fails as an unknown field (see describe_errors)
        if isinstance(data, dict) and "scheduler_address" in data:
            value = data["scheduler_address"]
            if value is None or (isinstance(value, str) and not value.strip()):
                data = {k: v for k, v in data.items() if k != "scheduler_address"}
        return data


class StoreParameters(_Model):
    """Where a collection lives."""

    store_url: str = Field(
        min_length=1,
        description=(
            "Root URL of the store: a local path, file://, memory:// or s3://bucket/prefix "
            "(S3 endpoint from CMSVD_S3_ENDPOINT, credentials from the usual AWS variables). "
            "Must lie under one of the roots the worker allows (CMSVD_ALLOWED_ROOTS), when it sets any."
        ),
    )
    collection: SafeName = Field(
        description=(
            "Collection name under the store root: 1 to 128 characters from letters, digits, "
            "dot, underscore and dash, starting with a letter or digit."
        ),  # same words as _NAME_RULE
    )

    @field_validator("store_url")
    @classmethod
    def _store_within_roots(cls, value: str) -> str:
        return _within_roots(value)


class ClusterParameters(StoreParameters, _NoScheduler):
    """Parameters of the cmsvd-cluster flow: certified clustering, compression and report of a collection."""

    rank: int = _spec("rank", "Shared basis rank r of every group.")
    eps: float = _spec("eps", "Certified bound on every group's relative rank-r error (both ends excluded).")
    method: Method = Field(
        default=Method(ClusteringParams.default("method")),
        description="Certified lower bound used while groups grow. Default: approximate.",
    )
    order: Order = Field(
        default=Order(ClusteringParams.default("order")),
        description="Candidate order: residual against the seed basis, or norm. Default: residual.",
    )
    oversampling: int = _spec("oversampling", "Extra sketch directions p for method approximate (sketch rank r + p).")
    patience: int = _spec("patience", "Groups in a row without any accepted candidate before the rest become singletons.")
    shard_size: int = _spec(
        "shard_size",
        "Most blocks per shard of the local stage (the local greedy costs about shard_size squared per shard).",
    )
    merge_neighbours: int = _spec("merge_neighbours", "Candidate partners per group in a merge round.")
    run_id: SafeName | None = Field(
        default=None,
        description=(
            "Run folder name under runs/COLLECTION/ in the store (same characters as a collection "
            "name). Re-running with the same id resumes after the last completed stage. Empty: "
            "derived from the collection contents and the parameters, so an interrupted run "
            "resumes when started again with the same values. Default: empty."
        ),
    )

    full: bool = Field(
        default=False,
        description=(
            "Re-cluster the whole collection. False (default): when blocks were appended since the "
            "latest finished run with these parameters, update that run incrementally (new blocks "
            "join its groups where the error stays within eps; a full run replaces the update when "
            "it drifts); otherwise a full run, which resumes or reuses a run of the same values."
        ),
    )

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``pipeline.distributed.ClusteringRun`` (numerics only): every
        field of ``pipeline.params.ClusteringParams``, the ones no flow parameter sets
        (tol, batch_bytes) at their defaults."""
        return ClusteringParams(
            rank=self.rank, eps=self.eps, method=self.method.value, order=self.order.value,
            oversampling=self.oversampling, patience=self.patience, shard_size=self.shard_size,
            merge_neighbours=self.merge_neighbours,
        ).as_dict()


class RunParameters(StoreParameters, _NoScheduler):
    """An existing run, for the cmsvd-compress and cmsvd-report flows; its clustering parameters are read back from the run folder."""

    run_id: SafeName = Field(
        description="Run folder name under runs/COLLECTION/ in the store (the run id)."
    )


class IngestParameters(StoreParameters):
    """Parameters of the cmsvd-ingest flow: a file or folder into a collection."""

    source: str = Field(
        min_length=1,
        description=(
            "File or folder to ingest: .npy stack, .npz, folder of .npy, .safetensors, .h5/.hdf5, "
            ".mat, or a Zarr array (local path or URL). Must lie under one of the roots the worker "
            "allows (CMSVD_ALLOWED_ROOTS), when it sets any."
        ),
    )
    dtype: DType | None = Field(
        default=None, description="Storage dtype. Empty: float32 for float32 input, else float64. Default: empty."
    )
    overwrite: bool = Field(default=False, description="Replace an existing collection of the same name. Default: off.")
    append: bool = Field(
        default=False,
        description=(
            "Add the source's blocks to the existing collection (atomic: if any block fails, the collection "
            "stays as it was; its version goes up by one). Excludes overwrite. Default: off."
        ),
    )
    name_prefix: str = Field(
        default="", max_length=200,
        description="Put this before every block name the source gives (keeps appended names unique). Default: empty.",
    )
    stack_complex: bool = Field(
        default=False, description="Store complex blocks as real rows over imaginary rows. Default: off."
    )
    column_length: int | None = _number(None, "safetensors only: rows of every column block.", ge=1, le=100_000_000)
    per: str | None = Field(default=None, description="safetensors only: block granularity (see storage.ingest_safetensors).")
    dataset: str | None = Field(default=None, description="HDF5 only: dataset path inside the file.")
    key: str | None = Field(default=None, description="MATLAB only: variable name.")
    layout: str | None = Field(default=None, description="MATLAB only: layout of the variable (see storage.ingest_mat).")

    @field_validator("source")
    @classmethod
    def _source_within_roots(cls, value: str) -> str:
        return _within_roots(value)

    def ingest_options(self) -> dict[str, Any]:
        """Options for ``storage.ingest_path``: only the ones that were given."""
        opts: dict[str, Any] = {"overwrite": self.overwrite}
        if self.append:
            opts["append"] = True
        if self.name_prefix:
            opts["name_prefix"] = self.name_prefix
        if self.stack_complex:
            opts["stack_complex"] = True
        if self.dtype is not None:
            opts["dtype"] = self.dtype.value
        for name in ("column_length", "per", "dataset", "key", "layout"):
            value = getattr(self, name)
            if value is not None:
                opts[name] = value
        return opts


class DemoParameters(StoreParameters):
    """Parameters of the cmsvd-demo-data flow: a synthetic union-of-subspaces collection."""

    n_blocks: int = _number(400, "Number of blocks.", ge=1, le=10_000_000)
    rows: int = _number(128, "Rows m of every block.", ge=1, le=1_000_000)
    width: int = _number(4, "Columns of every block.", ge=1, le=100_000)
    blocks_per_subspace: int = _number(100, "Blocks drawn from each random subspace.", ge=1, le=10_000_000)
    subspace_rank: int = _number(3, "Dimension of each subspace.", ge=1, le=100_000)
    noise: float = _number(0.02, "Noise level relative to the signal.", ge=0.0, le=10.0)
    seed: int = _number(0, "Random seed.", ge=0, le=_MAX_SEED)
    overwrite: bool = Field(default=False, description="Replace an existing collection of the same name. Default: off.")


# ---- validation at flow start -----------------------------------------------------------

M = TypeVar("M", bound=BaseModel)

_NAME_RULE = "use 1 to 128 characters from letters, digits, dot, underscore and dash, starting with a letter or digit"
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


class InvalidParameters(ValueError):
    """Flow parameters that fail validation.  The message is one line naming every bad field.

    A ``ValueError``, so the stage retry policy (``flows._common.is_transient``) treats it
    as permanent.
    """


def _field_range(model: type[BaseModel], loc: tuple) -> str | None:
    info: FieldInfo | None = model.model_fields.get(str(loc[0])) if loc else None
    if info is None:
        return None
    bounds: dict[str, Any] = {}
    for item in info.metadata:
        for cls, key in ((Ge, "ge"), (Gt, "gt"), (Le, "le"), (Lt, "lt")):
            if isinstance(item, cls):
                bounds[key] = getattr(item, key)
    return range_text(**bounds) if bounds else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value.value if isinstance(value, enum.Enum) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_errors(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One short phrase per failed field of *exc* (raised by *model*), in field order.

    Examples: ``eps=1.5 is out of range (more than 0 and less than 1)``,
    ``epsilon: unknown field``, ``collection: required``.
    """
    phrases = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        name = ".".join(str(p) for p in loc) or "params"
        kind = err.get("type", "")
        if kind == "missing":
            phrases.append(f"{name}: required")
        elif kind == "extra_forbidden" and name == "scheduler_address":
            phrases.append(f"{name}={_short(err.get('input'))}: {_SCHEDULER_REFUSED}")
        elif kind == "extra_forbidden":
            phrases.append(f"{name}: unknown field")
        elif kind == "string_pattern_mismatch":
            phrases.append(f"{name}={_short(err.get('input'))}: {_NAME_RULE}")
        elif kind == "value_error" and "error" in (err.get("ctx") or {}):
            # our validators' messages already name the value and the rule
            phrases.append(f"{name}: {' '.join(str(err['ctx']['error']).split())}")
        elif kind in _RANGE_ERRORS:
            allowed = _field_range(model, loc)
            phrases.append(f"{name}={_short(err.get('input'))} is out of range ({allowed or err.get('msg')})")
        else:
            phrases.append(f"{name}={_short(err.get('input'))}: {err.get('msg')}")
    return phrases


def validate_params(model: type[M], value: Any, flow_name: str = "") -> M:
    """Validate flow parameters, reporting every bad field at once.

    Parameters
    ----------
    model : type
        One of the parameter models of this module.
    value : model instance or mapping
        What the flow received: an instance (Python callers) or a dict (deployment runs
        with Prefect's own validation off, the command line).
    flow_name : str
        Named in the error message.

    Returns
    -------
    model instance

    Raises
    ------
    InvalidParameters
        One line: ``invalid parameters for cmsvd-cluster (2 fields): rank=0 is out of range
        (1 to 100000); eps=1.5 is out of range (more than 0 and less than 1)``.
    """
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):  # another model: validate its fields
        value = value.model_dump()
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        phrases = describe_errors(model, exc)
        where = f" for {flow_name}" if flow_name else ""
        count = f"{len(phrases)} field{'s' if len(phrases) != 1 else ''}"
        raise InvalidParameters(f"invalid parameters{where} ({count}): " + "; ".join(phrases)) from None
