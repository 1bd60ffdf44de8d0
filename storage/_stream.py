"""Shared types of the ingest streams: the ``(name, block, provenance)`` item and passthrough items."""

from __future__ import annotations

from typing import Any

NamedBlock = tuple[str | None, Any, Any]


class Passthrough:
    """A source item kept as raw bytes beside the blocks (not clustered, restored as is).

    Adapters yield ``(name, Passthrough(data, info), None)`` in their stream for items
    that cannot be cut into blocks; see :meth:`storage.CollectionWriter.add_passthrough`.
    """

    __slots__ = ("data", "info")

    def __init__(self, data: Any, info: dict | None = None) -> None:
        self.data, self.info = data, info or {}
