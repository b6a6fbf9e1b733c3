"""What the backends on a cluster engine (Ray, Dask) share: calls pickled as the local pool
pickles them, each run by one :meth:`EngineBackend.submit` (a map's chunks too), ``max_workers``
an ``anyio.CapacityLimiter``, the calls counted here, and streams whose items come in batches
(:class:`BatchedStream`).

Imported by those backends only: workers never import it.
"""

from __future__ import annotations

import abc
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from .._errors import BrokenWorkerError, PoolClosedError, SerializationError
from .._serialize import (
    Payload,
    describe,
    dumps_call_arguments,
    load_error,
    load_result,
    loads_each,
)
from .._stats import CallCounters, Ending, PoolStats
from ._base import (
    Backend,
    Call,
    ChannelSession,
    ChunkFeed,
    ChunkRunner,
    Feature,
    PendingCalls,
    StreamSession,
    SubmittedChunks,
    deliver,
    pickled_chunk,
    pickling_for,
)
from ._batches import ITEMS
from ._execution import ERROR

__all__ = ["BatchedStream", "EngineBackend"]


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


class BatchedStream(StreamSession):
    """A stream whose generator runs on the engine (``_batches.run_stream``), its items taken
    here a batch at a time: ``(ITEMS, a list's pickle)``, ``(EACH, a pickle each)``, and a last
    ``(ERROR, report)`` if the generator raised."""

    def __init__(self, counters: CallCounters, fn: Callable[..., Any]) -> None:
        self._counters = counters
        self._fn = fn
        self._items: deque[Any] = deque()
        self._unloadable: SerializationError | None = None
        self._over = False
        counters.started()

    @abc.abstractmethod
    async def next_batch(self) -> tuple[int, Any]:
        """The generator's next batch, once it is sent; ``StopAsyncIteration`` after the last.
        A failure of its process raises :class:`BrokenWorkerError` (:class:`PoolClosedError`
        where the pool was terminated)."""

    @abc.abstractmethod
    async def release(self, *, died: bool) -> None:
        """The stream is over: free its worker, or kill it (``died``: it died, or it runs a
        generator the consumer left). Shielded."""

    async def next(self) -> Any:
        while not self._items:
            if self._unloadable is not None:
                # The items before it are taken: now the one that could not be unpickled.
                await self._end("failed", died=True)
                raise self._unloadable
            if self._over:
                raise StopAsyncIteration
            try:
                kind, data = await self.next_batch()
            except StopAsyncIteration:
                await self._end("completed")
                raise
            except (BrokenWorkerError, PoolClosedError) as error:
                await self._end("aborted" if isinstance(error, PoolClosedError) else "failed", True)
                raise
            except BaseException:
                # Cancelled: stop the generator as when the consumer leaves early.
                await self.aclose()
                raise
            if kind == ERROR:
                await self._end("failed")
                raise load_error(data)
            if kind == ITEMS:
                self._items.extend(load_result(data, self._fn))  # (plain values: it cannot fail)
                continue
            try:
                for item in loads_each(data, f"the result of {describe(self._fn)}"):
                    self._items.append(item)
            except SerializationError as error:
                self._unloadable = error
        return self._items.popleft()

    async def aclose(self) -> None:
        """Kill the generator's process, as a cancelled call's: a generator that the engine
        holds back until its items are read runs no Python code to take ``GeneratorExit``."""
        await self._end("cancelled", died=True)

    async def _end(self, how: Ending, died: bool = False) -> None:
        if not self._over:
            self._over = True
            self._items.clear()
            self._counters.ended(how)
            await self.release(died=died)
