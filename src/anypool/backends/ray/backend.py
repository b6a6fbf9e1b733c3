"""The Ray backend: each call is a Ray task, awaited from asyncio or trio without a thread of
ours, and killed with its process (``ray.cancel(force=True)``) when its caller is cancelled."""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import anyio
import anyio.abc
import anyio.to_thread

from ..._errors import BrokenWorkerError, PoolClosedError, SerializationError
from ..._eventloop import ThreadsafeEvent, current_loop
from ..._serialize import (
    Payload,
    describe,
    dumps_call_arguments,
    load_error,
    load_result,
    loads_each,
)
from ..._stats import CallCounters, Ending, PoolStats
from .._base import (
    Backend,
    Call,
    ChannelSession,
    Chunk,
    ChunkFeed,
    ChunkRunner,
    Feature,
    PendingCalls,
    StreamSession,
    deliver,
    pickled_chunk,
    pickling_for,
)
from .._execution import ERROR, RESULT
from .remote import ITEMS, for_ray, largest_batch, on_paths

__all__ = ["RayBackend"]

_CANCEL_CONFIRMATION = 10.0
"""The longest a cancelled call waits for Ray to confirm that its task was killed."""


class RayBackend(Backend):
    """Calls run as Ray tasks, on the Ray this process is connected to.

    Args:
        address: the cluster to connect to (``"auto"``, ``"ray://host:10001"``...), when this
            process has not initialised Ray itself; ``None`` starts a local Ray.
        init_options: more arguments of ``ray.init``, when the backend calls it.
        task_options: arguments of ``.options(...)`` for every task (``num_cpus``,
            ``resources``, ``runtime_env``...). Tasks are never retried (``max_retries=0``):
            a call whose process dies raises :class:`BrokenWorkerError`.

    A Ray that was initialised already is used as it is and left running; a Ray the backend
    started is shut down when its pool is joined or terminated. The pool's ``max_workers``
    bounds the calls that run at once (default: the cluster's CPUs).
    """

    name: ClassVar[str] = "ray"
    unsupported: ClassVar[frozenset[Feature]] = frozenset({Feature.CHANNEL, Feature.QUEUE})
    instead: ClassVar[dict[Feature, str]] = {
        Feature.CHANNEL: "talk to a Ray actor instead",
        Feature.QUEUE: "use ray.util.queue.Queue instead",
    }

    def __init__(
        self,
        address: str | None = None,
        *,
        init_options: dict[str, Any] | None = None,
        task_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError as error:
            raise ImportError(
                "RayBackend needs Ray: install anypool[ray] (pip install 'anypool[ray]')"
            ) from error
        # Typed loosely: Ray is an optional dependency, absent where anypool is type-checked.
        self._ray: Any = ray
        self._address = address
        self._init_options = dict(init_options or {})
        self._task_options = {"max_retries": 0, **(task_options or {})}
        self._max_workers: int | None = None
        self._task: Any = None
        self._stream_task: Any = None
        self._starting: anyio.Event | None = None
        self._started_ray = False
        self._limiter: anyio.CapacityLimiter | None = None
        self._running: set[Any] = set()
        self.counters = CallCounters()
        self._pending = PendingCalls()
        super().__init__()
        # Where a Ray worker finds the functions pickled by reference (see remote.run_call).
        self._sys_path = tuple(sys.path)

    # --- the protocol ----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        if self._max_workers is not None:
            return self._max_workers
        if self._ray.is_initialized():
            return max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        return os.cpu_count() or 1

    def set_max_workers(self, max_workers: int) -> None:
        self._max_workers = max_workers
        if self._limiter is not None:
            self._limiter.total_tokens = max_workers

    @property
    def kill_grace(self) -> float:
        return 0.0  # ray.cancel(force=True) kills at once

    def call(self, call: Call, *, kill_on_cancel: bool) -> Awaitable[Any]:
        fn = call.fn
        with pickling_for(self):
            payload = dumps_call_arguments(
                (fn, call.args, call.kwargs, call.event_loop), fn, call.args, call.kwargs
            )
        return self._call(fn, payload, kill_on_cancel)

    def pack_chunk(
        self, fn: Callable[[Any], Any], items: Sequence[Any], *, raise_first: bool
    ) -> tuple[Any, int]:
        with pickling_for(self):
            return pickled_chunk(fn, items, raise_first=raise_first)

    def run_chunks(
        self, feed: ChunkFeed, group: anyio.abc.TaskGroup, *, kill_on_cancel: bool
    ) -> ChunkRunner:
        return _RayChunks(self, feed, group, kill_on_cancel)

    async def open_stream(self, call: Call, *, buffer: int) -> StreamSession:
        fn = call.fn
        with pickling_for(self):
            payload = dumps_call_arguments(
                (fn, call.args, call.kwargs, call.event_loop, buffer), fn, call.args, call.kwargs
            )
        batch = largest_batch(buffer)
        self._pending.add()
        # The stream holds its place among the max_workers until it ends, in whichever task.
        place = object()
        try:
            task = await self._ready_stream_task()
            await self._capacity_limiter().acquire_on_behalf_of(place)
        except BaseException:
            self._pending.finished()
            raise
        generator = task.remote(for_ray(payload), batch)
        self.counters.started()
        return _RayStream(self, fn, generator, place)

    async def open_channel(self, call: Call, *, buffer: int) -> ChannelSession:
        self.require(Feature.CHANNEL)
        raise AssertionError  # (require raised)

    def close(self) -> None:
        self._closed = True

    async def join(self) -> None:
        await self._pending.wait_all_done()
        self._shut_down_ray()

    async def terminate(self) -> None:
        self._closed = self._terminated = True
        for ref in list(self._running):
            self._cancel(ref)
        await self._pending.wait_all_done()
        self._shut_down_ray()

    def shutdown_now(self, grace: float) -> None:
        self._closed = self._terminated = True
        for ref in list(self._running):
            self._cancel(ref)
        self._shut_down_ray()

    def stats(self) -> PoolStats:
        counters = self.counters
        limiter = self._limiter
        return PoolStats(
            # Ray's worker processes are Ray's: the pool counts its calls only.
            workers_alive=0,
            workers_idle=0,
            workers_busy=0,
            calls_running=counters.running,
            calls_completed=counters.completed,
            calls_failed=counters.failed,
            calls_cancelled=counters.cancelled,
            workers_replaced=0,
            calls_waiting=limiter.statistics().tasks_waiting if limiter is not None else 0,
            calls_pending=self._pending.count,
        )

    def describe(self) -> str:
        return f"backend=ray max_workers={self.capacity}"

    # --- calls -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool) -> Any:
        kind, body = await self.submit(fn, payload, kill_on_cancel)
        return deliver(self.counters, kind, body, fn)

    async def submit(
        self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool
    ) -> tuple[int, Any]:
        """Run a pickled call in a Ray task, once fewer than ``max_workers`` run; its outcome
        as a local worker reports it, counted started. A failure of the task itself (its
        process died, the pool was terminated) is raised, counted as ended."""
        self._pending.add()
        try:
            task = await self._ready_task()
            async with self._capacity_limiter():
                if self._terminated:
                    raise PoolClosedError("the pool was terminated while the call waited")
                ref = task.remote(for_ray(payload))
                self._running.add(ref)
                self.counters.started()
                try:
                    return await self._outcome(ref, fn)
                except Exception as error:
                    self.counters.ended_with(error)
                    raise
                except BaseException:
                    self.counters.ended("cancelled")
                    await self._stop(ref, kill=kill_on_cancel or self._terminated)
                    raise
                finally:
                    self._running.discard(ref)
        finally:
            self._pending.finished()

    async def _outcome(
        self, ref: Any, fn: Callable[..., Any], what: str = "the call to"
    ) -> tuple[int, Any]:
        """Wait for the task: no thread, no polling; Ray's done-callback wakes this loop. Its
        failures name ``what`` ran: ``the call to`` ``fn``, ``the stream of`` it."""
        future = ref.future()
        await _when_done(future).wait()
        exceptions = self._ray.exceptions
        try:
            outcome: tuple[int, Any] = future.result()
        except exceptions.TaskCancelledError:
            raise PoolClosedError(f"the pool was terminated during {what} {describe(fn)}") from None
        except exceptions.RayError as error:
            # The task's process died (os._exit, a signal, the node lost): the call's own
            # errors come back as ERROR outcomes, never as a RayError.
            broken = BrokenWorkerError(None, None, f"{what} {describe(fn)}")
            broken.__cause__ = error
            raise broken from error
        return outcome

    async def _stop(self, ref: Any, *, kill: bool) -> None:
        """A call was cancelled: kill its task (and the process running it), and wait until Ray
        confirms it, or leave it to run out, its result dropped; ``join()`` waits for it."""
        done = _when_done(ref.future())
        if not kill:
            self._pending.add()

            async def run_out() -> None:
                try:
                    await done.wait()
                finally:
                    self._pending.finished()

            current_loop().spawn_detached(run_out)
            return
        self._cancel(ref)
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_CONFIRMATION):
            await done.wait()

    def _cancel(self, task: Any, end: Any = None) -> None:
        """Kill ``task`` (a call's ref, a stream's generator) and the process running it,
        unless its end (``end``: the call's ref, the generator's ``completed()``) is back.

        A forced cancel kills the process even when the task has ended, and with it the next
        task Ray gave that process meanwhile; one that races with the task's end can crash
        this process (Ray 2.60: "Tried to complete task that was not pending",
        docs/distributed.md). Skipping the tasks known to have ended narrows both races.
        """
        if (task if end is None else end).future().done():
            return
        with contextlib.suppress(Exception):
            self._ray.cancel(task, force=True)

    # --- admission and lifecycle -----------------------------------------------------------

    async def _ready_task(self) -> Any:
        """The remote function, once Ray runs (started in a thread: ``ray.init`` takes
        seconds, which the event loop must not wait through)."""
        while self._task is None:
            if self._starting is not None:
                await self._starting.wait()
                continue
            self._starting = starting = anyio.Event()
            try:
                await anyio.to_thread.run_sync(self._start_ray)
            finally:
                self._starting = None
                starting.set()
        return self._task

    def _start_ray(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self._address, **self._init_options)
            self._started_ray = True
        run_call, run_stream = on_paths(self._sys_path)
        self._task = ray.remote(run_call).options(**self._task_options)
        self._stream_task = ray.remote(run_stream).options(
            **self._task_options,
            num_returns="streaming",
            # Ray pauses the generator while this many of its objects are unread.
            _generator_backpressure_num_objects=1,
        )

    async def _ready_stream_task(self) -> Any:
        await self._ready_task()
        return self._stream_task

    def _capacity_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.capacity)
        return self._limiter

    def _shut_down_ray(self) -> None:
        if self._started_ray:
            self._started_ray = False
            self._task = None
            self._ray.shutdown()


class _RayStream(StreamSession):
    """A Ray streaming generator's items, a batch at a time, waited for without a thread."""

    def __init__(
        self, backend: RayBackend, fn: Callable[..., Any], generator: Any, place: object
    ) -> None:
        self._backend = backend
        self._fn = fn
        self._generator = generator
        self._place = place
        self._items: deque[Any] = deque()
        self._unloadable: SerializationError | None = None
        self._over = False

    async def next(self) -> Any:
        while not self._items:
            if self._unloadable is not None:
                # The items before it are taken: now the one that could not be unpickled.
                await self._close("failed")
                raise self._unloadable
            if self._over:
                raise StopAsyncIteration
            try:
                kind, data = await self._next_batch()
            except StopAsyncIteration:
                self._end("completed")
                raise
            except Exception as error:
                self._end("failed" if not isinstance(error, PoolClosedError) else "aborted")
                raise
            except BaseException:
                # Cancelled: stop the generator as when the consumer leaves early.
                await self.aclose()
                raise
            if kind == ERROR:
                self._end("failed")
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
        await self._close("cancelled")

    async def _close(self, how: Ending) -> None:
        """Kill the generator's task, and its process, and wait until Ray confirms it.

        Not Ray's interrupt (``ray.cancel(force=False)``): it reaches a generator only when it
        runs Python code, and one that Ray holds back until its items are read runs none; and
        a forced cancel racing with the end of an interrupted task crashes this process (Ray
        2.60's "Tried to complete task that was not pending")."""
        if self._over:
            return
        self._items.clear()
        with anyio.CancelScope(shield=True):
            completed = self._generator.completed()
            self._backend._cancel(self._generator, completed)
            with anyio.move_on_after(_CANCEL_CONFIRMATION):
                await _when_done(completed.future()).wait()
        self._end(how)

    async def _next_batch(self) -> tuple[int, Any]:
        """The generator's next object, once it is ready: Ray's own asyncio wait would not serve
        trio, so this waits on the done-callback of the object Ray says comes next."""
        generator = self._generator
        core_worker = generator.worker.core_worker
        expected, ready = core_worker.peek_object_ref_stream(generator._generator_ref)
        if not ready:
            await _when_done(expected.future()).wait()
        try:
            ref = next(generator)  # ready now: it does not block
        except StopIteration:
            raise StopAsyncIteration from None
        outcome: tuple[int, Any] = await self._backend._outcome(ref, self._fn, "the stream of")
        return outcome

    def _end(self, how: Ending) -> None:
        if not self._over:
            self._over = True
            self._items.clear()
            self._backend.counters.ended(how)
            limiter = self._backend._limiter
            if limiter is not None:
                limiter.release_on_behalf_of(self._place)
            self._backend._pending.finished()


def _when_done(future: Any) -> ThreadsafeEvent:
    """An event set once ``future`` (an object ref's ``future()``) is done, by its
    done-callback: the one way this backend waits for Ray, on any event loop."""
    event = current_loop().threadsafe_event()
    future.add_done_callback(lambda _: event.set_from_any_thread())
    return event


class _RayChunks(ChunkRunner):
    """Runs a map's chunks as Ray tasks, as many at once as the pool's ``max_workers``."""

    def __init__(
        self,
        backend: RayBackend,
        feed: ChunkFeed,
        group: anyio.abc.TaskGroup,
        kill_on_cancel: bool,
    ) -> None:
        self._backend = backend
        self._feed = feed
        self._group = group
        self._kill_on_cancel = kill_on_cancel
        self._lanes = 0
        self._hungry = 0  # lanes about to take a chunk

    def more(self) -> None:
        """Start lanes for the chunks no lane is about to take, up to ``max_workers``."""
        while len(self._feed.to_run) > self._hungry and self._lanes < self._backend.capacity:
            self._lanes += 1
            self._hungry += 1
            self._group.start_soon(self._lane)

    async def _lane(self) -> None:
        feed = self._feed
        try:
            while feed.to_run and not feed.closed:
                chunk = feed.to_run.popleft()
                self._hungry -= 1
                try:
                    await self._run(chunk)
                finally:
                    self._hungry += 1
        finally:
            self._lanes -= 1
            self._hungry -= 1

    async def _run(self, chunk: Chunk) -> None:
        feed, counters = self._feed, self._backend.counters
        try:
            kind, body = await self._backend.submit(feed.fn, chunk.packed, self._kill_on_cancel)
        except Exception as error:
            feed.chunk_failed(chunk, error)
            return
        if kind != RESULT:
            counters.ended("failed")
            feed.chunk_failed(chunk, load_error(body))
            return
        try:
            results, failures, seconds = load_result(body, feed.fn)
        except Exception as error:
            counters.ended("failed")
            feed.chunk_failed(chunk, error)
            return
        counters.ended("completed")
        feed.chunk_done(chunk, results, failures, seconds)


RayBackend.__module__ = "anypool.backends"
