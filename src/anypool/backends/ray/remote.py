"""What runs in a pool's worker actor on Ray: the same worker-side code as a local worker's, on
a pickled call.

Imported by Ray workers (by reference, as :class:`PoolWorker` is): it must stay free of anyio,
and import Ray nowhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..._serialize import Payload, with_pickle_buffers
from .._batches import run_stream
from .._execution import run_pickled_call, use_paths

__all__ = ["PoolWorker"]


class PoolWorker:
    """A worker of a pool on Ray: an actor, a process of its own, that runs the pool's calls one
    at a time. Its process is the pool's alone: killing it (``ray.kill``) kills the call it runs
    and nothing else, which Ray's forced cancel of a task cannot promise (docs/distributed.md).

    ``sys_path`` is the caller's: where functions pickled by reference are found (a Ray worker
    starts with its own path). Entries that do not exist on this machine are left out.
    """

    def __init__(self, sys_path: Sequence[str]) -> None:
        use_paths(sys_path)

    def call(self, payload: Payload) -> tuple[int, Any]:
        """Run the pickled call ``(fn, args, kwargs, event_loop)``; its outcome as a local
        worker sends it: ``(RESULT, pickled result)`` or ``(ERROR, pickled ErrorReport)``."""
        kind, body = run_pickled_call(payload)
        return kind, with_pickle_buffers(body)

    def stream(self, payload: Payload, batch: int) -> Iterator[Any]:
        """:func:`run_stream`, as a Ray streaming generator."""
        yield from run_stream(payload, batch)
