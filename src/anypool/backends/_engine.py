"""What the backends on a cluster engine (Ray, Dask) share: calls pickled as the local pool
pickles them, each run by one :meth:`EngineBackend.submit` (a map's chunks too), ``max_workers``
an ``anyio.CapacityLimiter``, and the calls counted here.

Imported by those backends only: workers never import it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from .._errors import PoolClosedError
from .._serialize import Payload, dumps_call_arguments
from .._stats import CallCounters, PoolStats
from ._base import (
    Backend,
    Call,
    ChannelSession,
    ChunkFeed,
    ChunkRunner,
    Feature,
    PendingCalls,
    SubmittedChunks,
    deliver,
    pickled_chunk,
    pickling_for,
)

__all__ = ["EngineBackend"]


class EngineBackend(Backend):
    """A backend whose calls run on a cluster engine, one :meth:`submit` each."""

    def __init__(self) -> None:
        super().__init__()
        self._max_workers: int | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self.counters = CallCounters()
        self._pending = PendingCalls()
        self._connecting: anyio.Event | None = None

    @abc.abstractmethod
    async def submit(
        self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool
    ) -> tuple[int, Any]:
        """Run the pickled call; its outcome ``(kind, body)`` as a local worker sends it,
        counted started. A failure to run it (its process died, the pool was terminated) is
        raised, counted as ended."""

    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether :meth:`connect` has connected the backend to its engine."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Connect to the engine, starting one where the backend owns it (blocking: seconds)."""

    async def ready(self) -> None:
        """Connect once, in a thread (starting an engine takes seconds, which the event loop
        must not wait through); the calls that come meanwhile wait for that one."""
        while not self.connected():
            if self._terminated:
                raise PoolClosedError("the pool was terminated while the call waited")
            if self._connecting is not None:
                await self._connecting.wait()
                continue
            self._connecting = connecting = anyio.Event()
            try:
                await anyio.to_thread.run_sync(self.connect)
            finally:
                self._connecting = None
                connecting.set()

    def engine_capacity(self) -> int | None:
        """How many calls the engine runs at once (its CPUs, its worker threads), once it is
        connected; the default ``max_workers``."""
        return None

    # --- the protocol ----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        if self._max_workers is not None:
            return self._max_workers
        return max(1, self.engine_capacity() or os.cpu_count() or 1)

    def set_max_workers(self, max_workers: int) -> None:
        self._max_workers = max_workers
        if self._limiter is not None:
            self._limiter.total_tokens = max_workers

    @property
    def kill_grace(self) -> float:
        return 0.0  # a cancelled call's process is killed at once

    def call(self, call: Call, *, kill_on_cancel: bool) -> Awaitable[Any]:
        fn = call.fn
        return self._call(fn, self.pickled_call(call), kill_on_cancel)

    def pickled_call(self, call: Call, *more: Any) -> Payload:
        """``(fn, args, kwargs, event_loop, *more)``, pickled as a local worker takes it."""
        fn = call.fn
        with pickling_for(self):
            return dumps_call_arguments(
                (fn, call.args, call.kwargs, call.event_loop, *more), fn, call.args, call.kwargs
            )

    def pack_chunk(
        self, fn: Callable[[Any], Any], items: Sequence[Any], *, raise_first: bool
    ) -> tuple[Any, int]:
        with pickling_for(self):
            return pickled_chunk(fn, items, raise_first=raise_first)

    def run_chunks(
        self, feed: ChunkFeed, group: anyio.abc.TaskGroup, *, kill_on_cancel: bool
    ) -> ChunkRunner:
        return SubmittedChunks(self, feed, group, kill_on_cancel)

    async def open_channel(self, call: Call, *, buffer: int) -> ChannelSession:
        self.require(Feature.CHANNEL)
        raise AssertionError  # (require raised)

    def close(self) -> None:
        self._closed = True

    def stats(self) -> PoolStats:
        counters, limiter = self.counters, self._limiter
        alive, idle, busy, replaced = self.worker_counts()
        return PoolStats(
            workers_alive=alive,
            workers_idle=idle,
            workers_busy=busy,
            calls_running=counters.running,
            calls_completed=counters.completed,
            calls_failed=counters.failed,
            calls_cancelled=counters.cancelled,
            workers_replaced=replaced,
            calls_waiting=limiter.statistics().tasks_waiting if limiter is not None else 0,
            calls_pending=self._pending.count,
        )

    def worker_counts(self) -> tuple[int, int, int, int]:
        """The workers alive, idle, busy, and those replaced, for :meth:`stats` (none where
        the engine's processes are the engine's)."""
        return 0, 0, 0, 0

    def describe(self) -> str:
        return f"backend={self.name} max_workers={self.capacity}"

    # --- calls -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool) -> Any:
        kind, body = await self.submit(fn, payload, kill_on_cancel)
        return deliver(self.counters, kind, body, fn)

    def _capacity_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.capacity)
        return self._limiter
