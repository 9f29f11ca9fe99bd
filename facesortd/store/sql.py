"""Small SQL helpers every store reader shares."""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

__all__ = ["MAX_VARIABLES", "in_chunks"]

T = TypeVar("T")

#: Bound parameters per statement: SQLite builds before 3.32 allow at most 999.
MAX_VARIABLES = 900


def in_chunks(values: Iterable[T], size: int = MAX_VARIABLES) -> Iterator[tuple[str, list[T]]]:
    """``(placeholders, chunk)`` for an ``IN (...)`` over any number of values, ``size`` at a time:
    ``for marks, part in in_chunks(ids): conn.execute(f"... IN ({marks})", part)``."""
    values = list(values)
    for start in range(0, len(values), size):
        part = values[start:start + size]
        yield ",".join("?" * len(part)), part
