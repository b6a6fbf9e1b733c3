"""What :meth:`anypool.Executor.map` sends a worker when ``chunksize > 1``.

It runs in workers, which load it by reference: it imports nothing, so that a worker that runs
it does not load anyio (workers start without it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["call_chunk"]

T = TypeVar("T")


def call_chunk(fn: Callable[..., T], chunk: Iterable[tuple[Any, ...]]) -> list[T]:
    """``[fn(*args) for args in chunk]``: one call of the pool for several items."""
    return [fn(*args) for args in chunk]
