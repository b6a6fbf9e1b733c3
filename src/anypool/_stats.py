"""What a pool counts: :class:`PoolStats`, and the counters a backend keeps them in."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ._errors import PoolClosedError

__all__ = ["CallCounters", "PoolStats"]


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's workers and calls, from :meth:`Pool.stats`."""

    workers_alive: int
    """Worker processes that are idle or running a call."""
    workers_idle: int
    workers_busy: int
    calls_running: int
    calls_completed: int
    """Calls that returned a result."""
    calls_failed: int
    """Calls that raised an error other than a cancellation."""
    calls_cancelled: int
    workers_replaced: int
    """Workers that were killed on cancellation, died, or were recycled by
    ``max_tasks_per_worker``; each is replaced by a new one when a call needs it."""
    initializer_failures: int = 0
    """Workers in a row whose initializer raised; 0 once a worker has run a call."""
    worker_start_delay: float = 0.0
    """Seconds until a new worker may start: after the initializer failed, new workers start
    after a back-off that doubles with each failure in a row, up to ``MAX_START_DELAY``."""
    calls_waiting: int = 0
    """Calls accepted that wait for a worker (or, on the local backend, for their turn behind
    the call a busy worker runs)."""
    calls_pending: int = 0
    """Calls accepted and not finished: waiting, running, or abandoned and still running in a
    worker (``kill_on_cancel=False``). :meth:`Pool.join` waits until none is left."""


Ending = Literal["completed", "failed", "cancelled", "aborted"]


class CallCounters:
    """The counts of calls that :class:`PoolStats` reports, kept by a backend: a call is
    :meth:`started` once it reaches a worker, and :meth:`ended` once, however it ends."""

    __slots__ = ("cancelled", "completed", "failed", "running")

    def __init__(self) -> None:
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0

    def started(self, calls: int = 1) -> None:
        self.running += calls

    def ended(self, how: Ending, calls: int = 1) -> None:
        """``calls`` that started have ended: returned (``"completed"``), raised
        (``"failed"``), were cancelled, or ``"aborted"``: they never ran after all (the
        worker retired before it read them: they run again elsewhere), or the pool was
        terminated under them."""
        self.running -= calls
        if how == "completed":
            self.completed += calls
        elif how == "failed":
            self.failed += calls
        elif how == "cancelled":
            self.cancelled += calls

    def ended_with(self, error: BaseException, calls: int = 1) -> None:
        """``calls`` that started have ended by ``error``: a cancellation (or an interrupt),
        the pool's termination, or a failure."""
        if isinstance(error, PoolClosedError):
            self.ended("aborted", calls)
        elif isinstance(error, Exception):
            self.ended("failed", calls)
        else:
            self.ended("cancelled", calls)


PoolStats.__module__ = "anypool"
