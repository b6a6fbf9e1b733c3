"""The local backend: calls run in worker processes on this machine, each reached through a
pipe that the event loop waits on.

Where each concern lives: ``workers`` (the cache of workers and the FIFO of calls waiting for
one), ``calls`` (``run``), ``sendahead`` (calls sent to a busy worker), ``lanes`` (``map``),
``sessions`` (``stream`` and ``open_channel``), ``handle`` (one worker process), ``transport``
(the parent's end of its pipe), ``wire``/``framing``/``shared_memory`` (what crosses the pipe),
``child`` (the worker's side), ``forkserver`` (the fork server that starts the workers of the
forkserver start method).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, Final

import anyio.abc

from ..._arguments import check_callable, check_count, check_seconds, check_timeout
from ..._cpu import cpu_count
from ..._serialize import dumps, dumps_call_arguments
from ..._stats import PoolStats
from .._base import (
    Backend,
    Call,
    ChannelSession,
    ChunkFeed,
    ChunkRunner,
    StreamSession,
    pickled_chunk,
)
from . import shared_memory, wire
from .calls import CallRunner
from .lanes import LaneRunner
from .sessions import LocalChannel, LocalStream, open_session
from .workers import WorkerCache

__all__ = ["START_METHODS", "LocalBackend"]

START_METHODS: Final = ("forkserver", "spawn", "fork")
"""The start methods a pool accepts, as in :mod:`multiprocessing`."""


class LocalBackend(Backend):
    """Worker processes on this machine. The arguments are :class:`anypool.Pool`'s."""

    name: ClassVar[str] = "local"

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        idle_timeout: float | None = 300.0,
        kill_grace: float = 1.0,
    ) -> None:
        max_workers = check_count("max_workers", max_workers, optional=True)
        if max_workers is None:
            max_workers = cpu_count()
        if start_method is None:
            start_method = "forkserver" if sys.platform == "linux" else "spawn"
        elif start_method not in START_METHODS:
            raise ValueError(
                "start_method must be one of "
                + ", ".join(repr(name) for name in START_METHODS)
                + f" or None, not {start_method!r}"
            )
        if initializer is not None:
            check_callable("initializer", initializer)
        if isinstance(initargs, (str, bytes)) or not isinstance(initargs, Iterable):
            raise TypeError(f"initargs must be a tuple of arguments, not {initargs!r}")
        max_tasks_per_worker = check_count(
            "max_tasks_per_worker", max_tasks_per_worker, optional=True
        )
        idle_timeout = check_timeout("idle_timeout", idle_timeout)
        kill_grace = check_seconds("kill_grace", kill_grace)
        config = wire.WorkerConfig(initializer, tuple(initargs), idle_timeout)
        self.workers = WorkerCache(
            max_workers, start_method, dumps(config), max_tasks_per_worker, kill_grace
        )
        self._calls = CallRunner(self.workers)
        super().__init__()
        _live_backends.add(self)
        # Large results come in shared memory that is worth reusing while the pool is open.
        # Called once the workers are gone, or when the pool is collected (whichever first).
        shared_memory.keep_spare_files(True)
        self._stop_keeping_spare_files = weakref.finalize(
            self, shared_memory.keep_spare_files, False
        )
        self._stop_keeping_spare_files.atexit = False

    @property
    def capacity(self) -> int:
        return self.workers.max_workers

    @property
    def kill_grace(self) -> float:
        return self.workers.kill_grace

    @property
    def start_method(self) -> str:
        return self.workers.start_method

    # --- calls -------------------------------------------------------------------------------

    def call(self, call: Call, *, kill_on_cancel: bool) -> Awaitable[Any]:
        fn = call.fn
        payload = dumps_call_arguments(
            (fn, call.args, call.kwargs, call.event_loop), fn, call.args, call.kwargs
        )
        return self._calls.run(fn, payload, kill_on_cancel)

    def pack_chunk(
        self, fn: Callable[[Any], Any], items: Sequence[Any], *, raise_first: bool
    ) -> tuple[Any, int]:
        return pickled_chunk(fn, items, raise_first=raise_first)

    def run_chunks(
        self, feed: ChunkFeed, group: anyio.abc.TaskGroup, *, kill_on_cancel: bool
    ) -> ChunkRunner:
        return LaneRunner(self.workers, feed, group, kill_on_cancel)

    async def open_stream(self, call: Call, *, buffer: int) -> StreamSession:
        payload = self._session_payload(call, buffer)
        worker = await open_session(self.workers, wire.STREAM, payload)
        return LocalStream(self.workers, worker, call.fn, payload, buffer)

    async def open_channel(self, call: Call, *, buffer: int) -> ChannelSession:
        payload = self._session_payload(call, buffer)
        worker = await open_session(self.workers, wire.OPEN, payload)
        return LocalChannel(self.workers, worker, call.fn, payload)

    @staticmethod
    def _session_payload(call: Call, buffer: int) -> Any:
        message = (call.fn, call.args, call.kwargs, call.event_loop, buffer)
        return dumps_call_arguments(message, call.fn, call.args, call.kwargs)

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True

    async def join(self) -> None:
        await self.workers.pending.wait_all_done()
        await self.workers.stop_idle_workers(terminate=False)
        self._stop_keeping_spare_files()

    async def terminate(self) -> None:
        self._closed = self._terminated = True
        await self.workers.terminate()
        self._stop_keeping_spare_files()

    def shutdown_now(self, grace: float) -> None:
        self._closed = self._terminated = True
        self.workers.shutdown_now(grace)
        self._stop_keeping_spare_files()

    def __del__(self) -> None:
        # Dropped without close() and join(), or terminate(), with workers still there (no
        # task can own a worker now: a call holds the pool). Like an unclosed transport or a
        # Popen still running, it warns; and since no one else will, it stops and reaps them,
        # without a grace period: this may run in the event loop's thread, at any time.
        workers = getattr(self, "workers", None)
        if workers is None:
            return  # the constructor's arguments were refused
        count = len(workers.idle) + len(workers.busy) + len(workers.leaving)
        if count and os.getpid() == self._owner_pid:
            warnings.warn(
                f"a pool was garbage-collected without being closed; its {count} worker "
                "process(es) are killed now (use `async with Pool() as pool:`)",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
            self.shutdown_now(0)

    def stats(self) -> PoolStats:
        workers = self.workers
        for worker in list(workers.idle):
            if not workers.still_serving(worker):
                workers.idle.remove(worker)
        counters = workers.counters
        return PoolStats(
            workers_alive=len(workers.idle) + len(workers.busy),
            workers_idle=len(workers.idle),
            workers_busy=len(workers.busy),
            calls_running=counters.running,
            calls_completed=counters.completed,
            calls_failed=counters.failed,
            calls_cancelled=counters.cancelled,
            workers_replaced=workers.workers_replaced,
            initializer_failures=workers.initializer_failures,
            worker_start_delay=max(0.0, workers.start_not_before - time.monotonic()),
            calls_waiting=len(workers.waiters) + len(workers.ahead.queued),
            calls_pending=workers.pending.count,
        )

    def describe(self) -> str:
        workers = self.workers
        return (
            f"max_workers={workers.max_workers} start_method={workers.start_method!r} "
            f"workers={len(workers.idle) + len(workers.busy)}"
        )


_live_backends: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


@atexit.register
def _stop_workers_at_exit() -> None:
    # multiprocessing's own exit handler does not know of the workers (see handle._starting):
    # stop those of pools still open, and reap them.
    for backend in list(_live_backends):
        backend.shutdown_now(backend.kill_grace)
