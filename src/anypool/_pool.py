"""The process pool: admission of calls, the cache of workers, lifecycle and statistics."""

from __future__ import annotations

import ast
import atexit
import contextlib
import dataclasses
import functools
import importlib.util
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import time
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from multiprocessing.context import BaseContext
from types import TracebackType
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeVar, overload

import anyio
import anyio.to_thread

from ._arguments import (
    check_callable,
    check_count,
    check_flag,
    check_seconds,
    check_timeout,
)
from ._channel import Channel
from ._cpu import cpu_count
from ._errors import BrokenWorkerError, InitializerError, PoolClosedError
from ._eventloop import Wakeup, checkpoint_if_cancelled, current_library, spawn_detached
from ._map import MapResults
from ._serialize import Payload, describe, dumps, dumps_call_arguments, load_error, load_result
from ._stream import StreamResults
from .backends.local import shared_memory
from .backends.local import wire as protocol
from .backends.local.child.duplex import AsyncChannelEnd, ChannelEnd
from .backends.local.handle import CAN_PAUSE, WorkerHandle
from .backends.local.transport import ChannelClosed

__all__ = ["START_METHODS", "CallOptions", "Pool", "PoolStats"]

P = ParamSpec("P")
T = TypeVar("T")

START_METHODS: Final = ("forkserver", "spawn", "fork")
"""The start methods a pool accepts, as in :mod:`multiprocessing`."""

_WORKER_MODULE: Final = "anypool.backends.local.child.worker"
_PRELOAD_MODULE: Final = "anypool.backends.local.child.preload"

FIRST_START_DELAY: Final = 0.1
"""Seconds a new worker waits to start after one whose initializer raised."""
MAX_START_DELAY: Final = 5.0
"""The longest wait before a new worker starts, however often the initializer raised."""
QUEUE_BEHIND_SECONDS: Final = 0.005
"""When every worker is busy, a call may be sent to one to start as soon as the call it runs is
over, if that worker's last call took less than this and the one it runs started less than this
ago. A call sent to a worker cannot go to another one that frees up first; for longer calls the
moment a worker waits between two is a small part of their time anyway."""
_QUEUED_MAX_BYTES: Final = 64 * 1024
"""Larger calls wait for a worker that is free: a call sent ahead must fit in the pipe."""


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


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """How a pool runs calls; see :meth:`Pool.with_options`."""

    kill_on_cancel: bool = True
    buffer: int = 64


class _Waiter:
    """A call waiting for a worker, in order of arrival."""

    __slots__ = ("event", "kill_on_cancel", "may_start", "payload", "slot", "worker")

    def __init__(self, payload: bytes | None, kill_on_cancel: bool) -> None:
        self.event = Wakeup()
        self.worker: WorkerHandle | None = None
        self.may_start = False
        self.payload = payload
        """The pickled call, if it may be sent to a busy worker."""
        self.kill_on_cancel = kill_on_cancel
        self.slot: _Slot | None = None
        """Set with ``worker`` when the call is to be sent behind the call that worker runs;
        if it was sent already, ``event`` is the slot's turn."""


class _Slot:
    """A call sent to a busy worker, to start once the call it runs is over."""

    __slots__ = ("dropped", "fate", "kill_on_cancel", "number", "sent", "turn")

    def __init__(self, turn: Wakeup | None = None) -> None:
        self.number = 0
        """Its number among the QUEUED calls of its worker, once sent."""
        self.sent = False
        self.turn = turn or Wakeup()
        """Set once the call ahead is over: the worker's next word is about this call (or
        ``fate`` says why there will be none)."""
        self.fate: Literal["retry", "lost"] | None = None
        """``"retry"``: the worker is gone and never started the call; ``"lost"``: it died
        running it."""
        self.dropped = False
        """Cancelled before it was known to start: a DROP followed it."""
        self.kill_on_cancel = True


class _Retry(Exception):
    """The worker retired before it read the call: run the call on another worker."""


class _PoolCore:
    """The state a pool shares with its :meth:`Pool.with_options` views."""

    def __init__(
        self,
        max_workers: int,
        start_method: str,
        config_blob: bytes,
        max_tasks_per_worker: int | None,
        kill_grace: float,
    ) -> None:
        self.max_workers = max_workers
        self.start_method = start_method
        self.context: BaseContext = multiprocessing.get_context(start_method)
        self.config_blob = config_blob
        self.max_tasks_per_worker = max_tasks_per_worker
        self.kill_grace = kill_grace
        self.owner_pid = os.getpid()

        # Idle workers, the most recently used last: reusing it keeps caches warm, and lets the
        # least recently used ones reach idle_timeout and retire.
        self.idle: list[WorkerHandle] = []
        # Workers lent to a call (or to the drain of an abandoned call).
        self.busy: set[WorkerHandle] = set()
        # Workers the pool let go of and has not yet reaped.
        self.leaving: set[WorkerHandle] = set()
        self.starting = 0
        self.waiters: deque[_Waiter] = deque()
        # Busy workers running a short call (see QUEUE_BEHIND_SECONDS) that may be sent the next
        # call behind it, with the time until which that call counts as short.
        self.queueable: dict[WorkerHandle, float] = {}
        # The call sent (or about to be) to a busy worker behind the call it runs, until that
        # call is over. One per worker: a call waits in a worker's pipe behind one call at most.
        self.queued: dict[WorkerHandle, _Slot] = {}

        self.closed = False
        self.terminated = False
        # Calls accepted and not yet finished, abandoned ones still draining included.
        self.accepted = 0
        self.all_done: anyio.Event | None = None

        self.calls_running = 0
        self.calls_completed = 0
        self.calls_failed = 0
        self.calls_cancelled = 0
        self.workers_replaced = 0
        self.initializer_failures = 0  # in a row
        self.start_not_before = 0.0  # time.monotonic() before which no worker starts
        _live_pools.add(self)
        # Large results come in shared memory that is worth reusing while the pool is open.
        # Called once the workers are gone, or when the pool is collected (whichever first).
        shared_memory.keep_spare_files(True)
        self.stop_keeping_spare_files = weakref.finalize(
            self, shared_memory.keep_spare_files, False
        )
        self.stop_keeping_spare_files.atexit = False

    # --- admission -------------------------------------------------------------------------

    def has_capacity(self) -> bool:
        return len(self.idle) + len(self.busy) + self.starting < self.max_workers

    async def acquire(self) -> WorkerHandle:
        """A worker for one call: an idle one, a new one, or the first one freed, in FIFO order."""
        worker, _ = await self.acquire_place(None, True)
        return worker

    async def acquire_place(
        self, payload: bytes | None, kill_on_cancel: bool
    ) -> tuple[WorkerHandle, _Slot | None]:
        """A worker for one call, as :meth:`acquire`; or, if the call's ``payload`` is given
        and every worker is busy, a busy one and the place behind the call it runs (the
        slot). A call that waited for such a place may come back sent already, at its turn."""
        if self.terminated:
            # (A map's later chunks get here as the pool is terminated.)
            raise PoolClosedError("the pool was terminated")
        if not self.waiters:
            worker = self.pop_idle()
            if worker is not None:
                return worker, None
            if self.has_capacity():
                self.starting += 1
                return await self.start_worker(), None
            if payload is not None and (worker := self.queueable_worker()) is not None:
                return worker, self.reserve_slot(worker)
        waiter = _Waiter(payload, kill_on_cancel)
        self.waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.worker is None:
                if waiter.may_start:
                    self.starting -= 1
                    self.dispatch()
                else:
                    self.waiters.remove(waiter)
            elif waiter.slot is not None and waiter.slot.sent:
                # Sent ahead, and cancelled before its turn (or as it came).
                self.calls_running -= 1
                self.calls_cancelled += 1
                await self.drop(waiter.worker, waiter.slot)
            elif waiter.slot is not None:
                self.withdraw(waiter.worker, waiter.slot)
            else:
                # Granted a worker at the instant we were cancelled: pass it on.
                self.release(waiter.worker)
            raise
        if waiter.worker is not None:
            return waiter.worker, waiter.slot
        if not waiter.may_start:
            raise PoolClosedError("the pool was terminated while the call waited for a worker")
        return await self.start_worker(), None

    def dispatch(self) -> None:
        """Hand idle workers, room for new ones, or places behind short calls, to waiting
        calls in order."""
        while self.waiters:
            worker = self.pop_idle()
            if worker is None and not self.has_capacity():
                break
            waiter = self.waiters.popleft()
            if worker is None:
                self.starting += 1
                waiter.may_start = True
            else:
                waiter.worker = worker
            waiter.event.set()
        while self.waiters and (payload := self.waiters[0].payload) is not None:
            worker = self.queueable_worker()
            if worker is None:
                return
            waiter = self.waiters.popleft()
            waiter.worker = worker
            # Sent now, the call sleeps on until its turn: a task step fewer than waking it
            # to send. (Should the pipe take nothing now, it is woken to send.)
            waiter.slot = slot = self.reserve_slot(worker, turn=waiter.event)
            slot.kill_on_cancel = waiter.kill_on_cancel
            frame = self.number_queued(worker, slot) + payload
            if worker.channel.send_nowait(protocol.QUEUED, frame):
                slot.sent = True
                self.calls_running += 1
            else:
                slot.turn = Wakeup()
                waiter.event.set()

    def queueable_worker(self) -> WorkerHandle | None:
        """A busy worker running a short call, that may be sent the next call behind it."""
        if self.queueable:
            now = time.monotonic()
            for worker, until in self.queueable.items():
                if now < until:
                    del self.queueable[worker]
                    return worker
            self.queueable.clear()
        return None

    def reserve_slot(self, worker: WorkerHandle, turn: Wakeup | None = None) -> _Slot:
        slot = self.queued[worker] = _Slot(turn)
        return slot

    @staticmethod
    def number_queued(worker: WorkerHandle, slot: _Slot) -> bytes:
        """Number the slot's call among the QUEUED calls of its worker; the number's bytes."""
        worker.queued_calls += 1
        slot.number = worker.queued_calls
        return protocol.COUNT.pack(slot.number)

    def running(self, worker: WorkerHandle) -> None:
        """A call starts on the worker: it may be sent the next one behind it if it is short."""
        now = worker.call_started = time.monotonic()
        if (
            worker.last_call_seconds < QUEUE_BEHIND_SECONDS
            and CAN_PAUSE
            and (self.max_tasks_per_worker is None or worker.calls + 2 <= self.max_tasks_per_worker)
        ):
            self.queueable[worker] = now + QUEUE_BEHIND_SECONDS
            if self.waiters:
                self.dispatch()

    def pop_idle(self) -> WorkerHandle | None:
        """The most recently used idle worker that is still alive, now marked busy."""
        while self.idle:
            worker = self.idle.pop()
            if self.still_serving(worker):
                self.busy.add(worker)
                return worker
        return None

    def still_serving(self, worker: WorkerHandle) -> bool:
        """Whether an idle worker is alive and has not retired; let it go if not."""
        try:
            # An idle worker has nothing to say unless it retired (RETIRING) or died (EOF).
            message = worker.channel.receive_nowait()
        except ChannelClosed:
            message = (protocol.RETIRING, b"")
        if message is None:
            return True
        self.let_go(worker)
        return False

    async def start_worker(self) -> WorkerHandle:
        """Start a worker for a call that already counted itself in ``starting``."""
        try:
            delay = self.start_not_before - time.monotonic()
            if delay > 0:
                # The initializer failed recently (see initializer_failed).
                await anyio.sleep(delay)
            if self.start_method == "forkserver":
                # Starting the forkserver itself takes long the first time: keep the event loop
                # free meanwhile. (Workers are its children, so this thread's lifetime is moot.)
                worker = await anyio.to_thread.run_sync(
                    WorkerHandle.start, self.context, self.config_blob
                )
            else:
                # fork and spawn return within milliseconds. The worker dies with the thread that
                # started it (PR_SET_PDEATHSIG), so that must be the event loop's, not a helper's.
                worker = WorkerHandle.start(self.context, self.config_blob)
        except BaseException:
            self.starting -= 1
            self.dispatch()
            raise
        self.starting -= 1
        self.busy.add(worker)
        if self.terminated:
            await self.stop_busy(worker, terminate=True, replaced=False)
            raise PoolClosedError("the pool was terminated while a worker was starting")
        return worker

    async def initializer_failed(
        self, worker: WorkerHandle, report: bytes | bytearray
    ) -> InitializerError:
        """Reap a worker whose initializer raised (``report``: its INIT_FAILED message), and
        return the error for its call. New workers start only after a back-off, which doubles
        with each failure in a row (up to ``MAX_START_DELAY``), so that a broken initializer
        does not make the pool start workers in a loop."""
        await self.stop_busy(worker, terminate=False, replaced=False)
        self.initializer_failures += 1
        delay = min(FIRST_START_DELAY * 2 ** (self.initializer_failures - 1), MAX_START_DELAY)
        self.start_not_before = time.monotonic() + delay
        error = InitializerError(f"the pool's initializer raised in worker process {worker.pid}")
        error.__cause__ = load_error(report)
        return error

    def finish(self, worker: WorkerHandle) -> None:
        """The worker's call is over and its outcome read: the worker goes on to the call
        queued behind it, or back to the pool."""
        self.queueable.pop(worker, None)
        slot = self.queued.pop(worker, None)
        if slot is None:
            self.release(worker)
        elif slot.dropped:
            self.resolve_dropped(worker, slot)
        else:
            # The slot's call reads the worker's pipe from now on. It may not have started
            # yet, but it is the worker's next call: once it is sent, so may the one after it
            # be (not before: the worker runs calls in the order they reach it).
            if slot.sent:
                # Its task reads STARTED, then waits for the outcome: woken once that is here.
                worker.channel.set_when_more_arrives(slot.turn, protocol.STARTED)
                self.running(worker)
            else:
                slot.turn.set()  # to send its call

    def withdraw(self, worker: WorkerHandle, slot: _Slot) -> None:
        """Give up the place behind a busy worker's call, before the call was sent there."""
        if self.queued.get(worker) is slot:
            del self.queued[worker]
        elif slot.turn.is_set and slot.fate is None:
            # The call ahead is over and the worker was passed on to this call: pass it on.
            self.finish(worker)

    def release(self, worker: WorkerHandle) -> None:
        """Take back a worker whose call is over and that is ready for another."""
        # It ran a call, so the initializer worked: no more back-off.
        self.initializer_failures = 0
        self.start_not_before = 0.0
        self.busy.discard(worker)
        if self.terminated:
            self.let_go(worker)
        elif self.max_tasks_per_worker is not None and worker.calls >= self.max_tasks_per_worker:
            self.workers_replaced += 1
            self.let_go(worker)
        else:
            self.idle.append(worker)
        self.dispatch()

    async def stop_busy(
        self, worker: WorkerHandle, *, terminate: bool, replaced: bool = True
    ) -> int | None:
        """Stop and reap a busy worker (see :meth:`WorkerHandle.stop`), then forget it and pass
        its place on. Returns its exit code."""
        slot = self.take_place(worker)
        # Terminated with a call queued behind: what it left in its pipe says whether it
        # started that call.
        keep_pipe = slot is not None and terminate
        try:
            return await worker.stop(self.kill_grace, terminate=terminate, keep_pipe=keep_pipe)
        finally:
            if slot is not None:
                started = (protocol.STARTED, protocol.COUNT.pack(slot.number))
                lost = not slot.dropped and started in self.leftover_frames(worker)
                self.tell(slot, "lost" if lost else "retry")
            if keep_pipe:
                worker.close_pipe()
            self.busy.discard(worker)
            if replaced and not self.terminated:
                self.workers_replaced += 1
            self.dispatch()

    def take_place(self, worker: WorkerHandle) -> _Slot | None:
        """The worker will take no call behind its own: forget that it could, and return the
        call queued behind it, if any, for the caller to :meth:`tell` what became of it."""
        self.queueable.pop(worker, None)
        return self.queued.pop(worker, None)

    @staticmethod
    def tell(slot: _Slot, fate: Literal["retry", "lost"]) -> None:
        """Tell the call queued behind a worker's call why that worker will not run it."""
        if not slot.dropped:  # a dropped call's caller is gone
            slot.fate = fate
            slot.turn.set()

    @staticmethod
    def leftover_frames(worker: WorkerHandle) -> Iterator[tuple[int, Any]]:
        """The frames already in a worker's pipe, read without waiting, up to its end."""
        try:
            while (frame := worker.channel.receive_nowait()) is not None:
                yield frame
        except ChannelClosed:
            pass

    def let_go(self, worker: WorkerHandle) -> None:
        """Close a worker's pipe so that it exits; it is reaped later."""
        worker.close_pipe()
        self.leaving.add(worker)
        # Reap the ones already gone without waiting, so that none lingers as a zombie.
        for gone in [w for w in self.leaving if w.poll_exited()]:
            self.leaving.discard(gone)

    # --- calls -----------------------------------------------------------------------------

    async def submit(self, fn: Callable[..., Any], payload: Payload, options: CallOptions) -> Any:
        """Run a pickled call on a worker; return its result."""
        self.accepted += 1
        try:
            # Only a small call may wait in a busy worker's pipe.
            small = (
                payload if type(payload) is bytes and len(payload) <= _QUEUED_MAX_BYTES else None
            )
            worker, slot = await self.acquire_place(small, options.kill_on_cancel)
            while True:
                try:
                    if slot is None:
                        return await self.call(worker, fn, payload, options)
                    assert small is not None
                    return await self.call_queued(worker, slot, fn, small, options)
                except _Retry:
                    if slot is None:
                        worker = await self.replace_retired(worker)
                    else:
                        worker, slot = await self.acquire_place(small, options.kill_on_cancel)
        finally:
            self.call_finished()

    async def replace_retired(self, worker: WorkerHandle) -> WorkerHandle:
        """Let go of a busy worker that retired before it read its call, and return another
        for that call: the retired worker's place is still the call's, so it waits for none."""
        self.let_go_retired(worker)
        replacement = self.pop_idle()
        if replacement is None:
            self.starting += 1
            replacement = await self.start_worker()
        return replacement

    def let_go_retired(self, worker: WorkerHandle) -> None:
        """Forget a busy worker that said RETIRING: it reads nothing more and exits."""
        self.busy.discard(worker)
        if (slot := self.take_place(worker)) is not None:
            self.tell(slot, "retry")  # it read nothing more
        self.let_go(worker)

    async def open_session(self, kind: int, payload: Payload) -> WorkerHandle:
        """A worker that was sent ``payload`` as a ``kind`` message, which starts a stream or a
        channel: a call that runs until :meth:`end_session`."""
        self.accepted += 1
        worker: WorkerHandle | None = None
        try:
            worker = await self.acquire()
            self.calls_running += 1
            await worker.channel.send(kind, payload)
        except BaseException:
            if worker is not None:
                self.calls_running -= 1
                await self.stop_busy(worker, terminate=True)
            self.call_finished()
            raise
        return worker

    def end_session(self, *, failed: bool | None) -> None:
        """Account for the end of a stream or a channel; ``failed`` is ``None`` when the
        caller ended it early."""
        self.calls_running -= 1
        if failed is None:
            self.calls_cancelled += 1
        elif failed:
            self.calls_failed += 1
        else:
            self.calls_completed += 1
        self.call_finished()

    def call_finished(self) -> None:
        self.accepted -= 1
        if self.accepted == 0 and self.all_done is not None:
            self.all_done.set()
            self.all_done = None

    async def call(
        self,
        worker: WorkerHandle,
        fn: Callable[..., Any],
        payload: Payload,
        options: CallOptions,
    ) -> Any:
        """Run a call on a worker of its own."""
        self.calls_running += 1
        return await self.outcome(worker, fn, options, send=payload)

    async def call_queued(
        self,
        worker: WorkerHandle,
        slot: _Slot,
        fn: Callable[..., Any],
        payload: bytes,
        options: CallOptions,
    ) -> Any:
        """Run a call on a busy worker, sent now to start once the call it runs is over.

        Raises:
            _Retry: the worker is gone and never started the call.
        """
        if not slot.sent:
            slot.kill_on_cancel = options.kill_on_cancel
            try:
                # Whole: cut short, the frame would break the pipe for the call ahead too.
                await worker.channel.send(
                    protocol.QUEUED, self.number_queued(worker, slot) + payload, whole=True
                )
            except ChannelClosed:
                # The worker is gone or going; whoever reads its pipe sees to it.
                self.withdraw(worker, slot)
                raise _Retry from None
            except BaseException:
                # Cancelled before a byte of it was sent.
                self.withdraw(worker, slot)
                raise
            slot.sent = True
            if slot.turn.is_set and slot.fate is None:
                self.running(worker)  # (see finish)
            self.calls_running += 1
        try:
            await slot.turn.wait()
            if slot.fate is None:
                kind, body = await worker.receive()
        except ChannelClosed:
            # Gone before it said a word of this call.
            self.calls_running -= 1
            await self.stop_busy(worker, terminate=False)
            raise _Retry from None
        except BaseException:
            self.calls_running -= 1
            self.calls_cancelled += 1
            await self.drop(worker, slot)
            raise
        if slot.fate is not None:
            self.calls_running -= 1
            if slot.fate == "retry":
                raise _Retry
            if self.terminated:
                raise PoolClosedError(f"the pool was terminated during the call to {describe(fn)}")
            self.calls_failed += 1
            raise BrokenWorkerError(worker.pid, worker.exitcode, f"the call to {describe(fn)}")
        if kind == protocol.RETIRING:
            self.calls_running -= 1
            self.let_go_retired(worker)
            raise _Retry
        assert (kind, body) == (protocol.STARTED, protocol.COUNT.pack(slot.number)), kind
        return await self.outcome(worker, fn, options)

    async def drop(self, worker: WorkerHandle, slot: _Slot) -> None:
        """Withdraw a queued call that was cancelled. If the worker has said that it started
        the call, it is stopped (or run out) as any cancelled call, before this returns.
        Otherwise the worker skips it, or if it had started it, it is stopped or run out in the
        background (see :meth:`resolve_dropped`)."""
        if slot.fate is not None:
            return  # the worker is gone, and whoever saw it go saw to the rest
        reads_the_answer = slot.turn.is_set
        if reads_the_answer:
            # The call ahead is over, and the worker may have said already what it did next
            # (on asyncio the call's task sleeps on through its whole run).
            try:
                frame = worker.channel.receive_nowait()
            except ChannelClosed:
                await self.stop_busy(worker, terminate=False)
                return
            if frame is not None:
                await self.settle_dropped(worker, slot, frame)
                return
        # Otherwise whoever finishes the call ahead sees the drop and waits for the answer.
        slot.dropped = True
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ChannelClosed):
                await worker.channel.send(protocol.DROP, protocol.COUNT.pack(slot.number))
        if reads_the_answer:
            self.resolve_dropped(worker, slot)

    def resolve_dropped(self, worker: WorkerHandle, slot: _Slot) -> None:
        """In the background: hear whether the worker skipped a dropped call or had started
        it already, and treat a started one as any cancelled call."""
        self.accepted += 1

        async def resolve() -> None:
            try:
                await self.settle_dropped(worker, slot, await worker.receive())
            except ChannelClosed:
                await self.stop_busy(worker, terminate=False)
            except BaseException:
                # The event loop is ending: nobody will wait for this worker any more.
                await self.stop_busy(worker, terminate=True)
            finally:
                self.call_finished()

        spawn_detached(resolve)

    async def settle_dropped(
        self, worker: WorkerHandle, slot: _Slot, answer: tuple[int, bytes | bytearray]
    ) -> None:
        """Stop or reuse the worker of a queued call that was cancelled once the call ahead of
        it was over, given the worker's first word after that call."""
        kind = answer[0]
        if kind == protocol.RETIRING:
            self.let_go_retired(worker)
            self.dispatch()
        elif kind == protocol.SKIPPED:
            self.finish(worker)
        else:
            assert answer == (protocol.STARTED, protocol.COUNT.pack(slot.number)), kind
            if slot.kill_on_cancel or self.terminated:
                await self.stop_cancelled(worker)
            else:
                self.drain_in_background(worker)

    async def outcome(
        self,
        worker: WorkerHandle,
        fn: Callable[..., Any],
        options: CallOptions,
        send: Payload | None = None,
    ) -> Any:
        """The outcome of the call the worker runs (sent first, if ``send`` is given): its
        result, or its error raised."""
        sent = send is None
        try:
            if send is not None:
                await worker.channel.send(protocol.CALL, send)
                sent = True
                # Only now may a call be sent behind it: the worker runs calls in pipe order.
                self.running(worker)
            kind, body = await worker.receive()
        except ChannelClosed:
            self.calls_running -= 1
            raise await self.worker_lost(worker, fn) from None
        except BaseException:
            # Cancelled (or interrupted) while the worker runs the call.
            self.calls_running -= 1
            self.calls_cancelled += 1
            if sent and not options.kill_on_cancel and not self.terminated:
                self.drain_in_background(worker)
            else:
                # A frame cut short by the cancellation leaves the pipe unusable: kill anyway.
                await self.stop_cancelled(worker)
            raise
        self.calls_running -= 1
        if kind == protocol.RETIRING:
            raise _Retry
        if kind == protocol.INIT_FAILED:
            self.calls_failed += 1
            raise await self.initializer_failed(worker, body)
        worker.calls += 1
        worker.last_call_seconds = time.monotonic() - worker.call_started
        self.finish(worker)
        if kind == protocol.RESULT:
            try:
                result = load_result(body, fn)
            except BaseException:
                self.calls_failed += 1
                raise
            self.calls_completed += 1
            return result
        self.calls_failed += 1
        raise load_error(body)

    async def stop_cancelled(self, worker: WorkerHandle) -> None:
        """Terminate the worker of a cancelled call; unless the call is over already and the
        worker goes on to the call queued behind it, which must not die with it."""
        slot = self.queued.get(worker)
        if slot is not None and not slot.dropped:
            # Stopped, the worker cannot finish the call and start the next meanwhile.
            if worker.pause():
                if self.outcome_arrived(worker):
                    worker.resume()
                    worker.calls += 1
                    self.finish(worker)
                    return
                # It dies as it resumes, before it could start the next call.
                worker.signal(signal.SIGTERM)
            worker.resume()
        await self.stop_busy(worker, terminate=True)

    def outcome_arrived(self, worker: WorkerHandle) -> bool:
        """Whether the outcome of the worker's call has arrived, unread; it is read if so."""
        for kind, _ in self.leftover_frames(worker):
            if kind == protocol.RESULT or kind == protocol.ERROR:
                return True
            if kind == protocol.QUEUE_PUT or kind == protocol.QUEUE_GET:
                return False  # the call waits for the answer
        return False

    async def worker_lost(self, worker: WorkerHandle, fn: Callable[..., Any]) -> Exception:
        """Reap a busy worker whose pipe closed under a call to ``fn``; the error for the call."""
        # The worker is exiting (or was told to): wait for its exit status.
        exitcode = await self.stop_busy(worker, terminate=False)
        if self.terminated:
            return PoolClosedError(f"the pool was terminated during the call to {describe(fn)}")
        self.calls_failed += 1
        return BrokenWorkerError(
            worker.pid, exitcode, f"the call to {describe(fn)}", first_call=worker.calls == 0
        )

    def drain_in_background(self, worker: WorkerHandle, calls: int = 1) -> None:
        """Let the worker finish the abandoned ``calls`` it was sent; discard their outcomes,
        then reuse the worker."""
        self.accepted += 1

        async def drain() -> None:
            try:
                for _ in range(calls):
                    kind, body = await worker.receive()
                    if kind == protocol.INIT_FAILED:
                        await self.initializer_failed(worker, body)
                        return
                    if kind == protocol.RETIRING:
                        # It exits without reading the calls that remain.
                        self.let_go_retired(worker)
                        self.dispatch()
                        return
                    worker.calls += 1
            except ChannelClosed:
                await self.stop_busy(worker, terminate=False)
            except BaseException:
                # The event loop is ending: nobody will wait for this worker any more.
                await self.stop_busy(worker, terminate=True)
            else:
                self.finish(worker)
            finally:
                self.call_finished()

        spawn_detached(drain)

    # --- lifecycle -------------------------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise PoolClosedError(
                "the pool is closed" + (" (terminated)" if self.terminated else "")
            )
        if os.getpid() != self.owner_pid:
            raise RuntimeError("a pool can only be used by the process that created it")

    async def wait_all_done(self) -> None:
        if self.accepted:
            if self.all_done is None:
                self.all_done = anyio.Event()
            await self.all_done.wait()

    async def stop_idle_workers(self, *, terminate: bool) -> None:
        """Stop and reap, all at once, the workers no call owns: idle and leaving ones."""
        workers = [*self.idle, *self.leaving]
        self.idle.clear()
        self.leaving.clear()
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(
                    functools.partial(worker.stop, self.kill_grace, terminate=terminate)
                )

    async def terminate(self) -> None:
        self.closed = self.terminated = True
        for waiter in self.waiters:
            waiter.event.set()
        self.waiters.clear()
        # Busy workers belong to their calls, which reap them once the pipe closes.
        for worker in self.busy:
            worker.signal(signal.SIGTERM)
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(self.stop_idle_workers, terminate=True))
            with anyio.move_on_after(self.kill_grace):
                await self.wait_all_done()
            for worker in self.busy:
                worker.signal(signal.SIGKILL)
            await self.wait_all_done()
        self.stop_keeping_spare_files()

    def shutdown_now(self, grace: float) -> None:
        """Stop every worker, blocking: for interpreter exit, when no event loop is left, or a
        pool that was dropped unclosed. Busy workers are killed; idle ones are given ``grace``
        seconds to exit."""
        self.closed = self.terminated = True
        for worker in self.busy:
            worker.signal(signal.SIGKILL)
        for worker in [*self.idle, *self.busy, *self.leaving]:
            worker.stop_now(grace)
        self.idle.clear()
        self.busy.clear()
        self.leaving.clear()
        self.stop_keeping_spare_files()

    def __del__(self) -> None:
        # Dropped without close() and join(), or terminate(), with workers still there (no
        # task can own a worker now: a call holds the pool). Like an unclosed transport or a
        # Popen still running, it warns; and since no one else will, it stops and reaps them,
        # without a grace period: this may run in the event loop's thread, at any time.
        workers = len(self.idle) + len(self.busy) + len(self.leaving)
        if workers and os.getpid() == self.owner_pid:
            warnings.warn(
                f"a pool was garbage-collected without being closed; its {workers} worker "
                "process(es) are killed now (use `async with Pool() as pool:`)",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
            self.shutdown_now(0)

    def stats(self) -> PoolStats:
        for worker in list(self.idle):
            if not self.still_serving(worker):
                self.idle.remove(worker)
        return PoolStats(
            workers_alive=len(self.idle) + len(self.busy),
            workers_idle=len(self.idle),
            workers_busy=len(self.busy),
            calls_running=self.calls_running,
            calls_completed=self.calls_completed,
            calls_failed=self.calls_failed,
            calls_cancelled=self.calls_cancelled,
            workers_replaced=self.workers_replaced,
            initializer_failures=self.initializer_failures,
            worker_start_delay=max(0.0, self.start_not_before - time.monotonic()),
        )


_live_pools: weakref.WeakSet[_PoolCore] = weakref.WeakSet()


@atexit.register
def _stop_workers_at_exit() -> None:
    # multiprocessing's own exit handler does not know of the workers (see _worker._starting):
    # stop those of pools still open, and reap them.
    for core in list(_live_pools):
        core.shutdown_now(core.kill_grace)


class Pool:
    """A pool of worker processes that async code awaits.

    Args:
        max_workers: the most worker processes at once; default :func:`anypool.cpu_count`.
        start_method: how workers start: ``"forkserver"`` (the default on Linux), ``"spawn"``
            or ``"fork"``, as in :mod:`multiprocessing`.
        initializer: called as ``initializer(*initargs)`` once in each worker before its first
            call. If it raises, that call raises :class:`InitializerError`.
        initargs: the arguments of ``initializer``.
        max_tasks_per_worker: replace a worker after this many calls; ``None`` for never.
        idle_timeout: a worker idle for this many seconds exits; ``None`` (or ``math.inf``)
            for never.
        kill_grace: seconds between SIGTERM and SIGKILL when a worker is stopped.

    Workers start when calls need them. Use the pool as ``async with Pool() as pool:``; leaving
    the block normally waits for the calls it accepted (:meth:`close` then :meth:`join`),
    leaving it with an exception or a cancellation stops everything (:meth:`terminate`). Either
    way no worker process remains afterwards.

    A pool belongs to one event loop at a time and is not thread-safe.
    """

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
        if start_method == "forkserver":
            _preload_worker_module_in_forkserver()
        config = protocol.WorkerConfig(initializer, tuple(initargs), idle_timeout)
        self._core = _PoolCore(
            max_workers, start_method, dumps(config), max_tasks_per_worker, kill_grace
        )
        self._options = CallOptions()

    @property
    def max_workers(self) -> int:
        return self._core.max_workers

    @property
    def start_method(self) -> str:
        return self._core.start_method

    @property
    def kill_grace(self) -> float:
        return self._core.kill_grace

    def with_options(
        self, *, kill_on_cancel: bool | None = None, buffer: int | None = None
    ) -> Pool:
        """This pool with other call options: same workers, same lifecycle. An option left
        out keeps its current value.

        Args:
            kill_on_cancel: ``True`` (the default): a cancelled call's worker is terminated.
                ``False``: the caller is cancelled at once, the worker finishes the call, the
                result is discarded and the worker is reused. (:meth:`run` and :meth:`map`.)
            buffer: how many items a generator run by :meth:`stream` may make ahead of the
                items its consumer took, and how many items each side of a channel from
                :meth:`open_channel` may send ahead of the other side (default 64).

        Options travel apart from the arguments of ``run`` and ``stream``, so they never clash
        with the keyword arguments of the function called.
        """
        changes: dict[str, Any] = {}
        if kill_on_cancel is not None:
            changes["kill_on_cancel"] = check_flag("kill_on_cancel", kill_on_cancel)
        if buffer is not None:
            changes["buffer"] = check_count("buffer", buffer)
        view = object.__new__(Pool)
        view._core = self._core
        view._options = dataclasses.replace(self._options, **changes)
        return view

    @overload
    async def run(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def run(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` in a worker and return its result.

        ``fn`` may be any picklable callable (lambdas and closures included); if it is an
        ``async def``, it runs on an event loop in the worker (trio if the caller runs trio, else
        asyncio).

        This is a checkpoint, and a call from a task whose cancellation is pending is never sent.
        If the calling task is cancelled while the call runs, the worker is terminated (SIGTERM,
        then SIGKILL after ``kill_grace``) and reaped before the cancellation propagates; see
        :meth:`with_options` to let the worker finish instead.

        Raises:
            Exception: what ``fn`` raised, as itself, with a :class:`RemoteTraceback` as its
                ``__cause__``.
            RemoteError: ``fn`` raised something that cannot be delivered as itself.
            BrokenWorkerError: the worker died during the call.
            SerializationError: an argument or the result could not be pickled.
            InitializerError: the pool's initializer raised in the new worker.
            PoolClosedError: the pool is closed, or was terminated during the call.
        """
        # Not a full checkpoint: the wait for the worker yields to the event loop anyway.
        await checkpoint_if_cancelled()
        check_callable("fn", fn)
        core = self._core
        core.check_open()
        payload = dumps_call_arguments((fn, args, kwargs, current_library()), fn, args, kwargs)
        return await core.submit(fn, payload, self._options)

    def map(
        self,
        fn: Callable[[Any], T],
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        max_in_flight: int | None = None,
        return_exceptions: bool = False,
        progress: bool | Callable[[int, int | None], object] | None = None,
    ) -> MapResults[T]:
        """Call ``fn(item)`` for each item of ``iterable`` on the workers; iterate the results.

        Use ``async for result in pool.map(...)``, or ``async with pool.map(...) as results``
        to be sure the calls still running are cancelled when the block is left early.

        Args:
            fn: as for :meth:`run`; called with one item.
            iterable: a sync or async iterable, consumed lazily, possibly endless.
            ordered: results in input order (``True``) or as chunks finish (``False``).
            chunksize: items sent to a worker per call, or ``"auto"`` to size chunks from the
                measured time per item, so that tiny functions run at full speed.
            max_in_flight: at most this many items are taken from ``iterable`` ahead of the
                results handed out. Default: three chunks per worker.
            return_exceptions: yield the exception an item raised instead of raising it.
            progress: ``True`` for a tqdm progress bar (``anypool[progress]``), or a callable
                called as ``progress(done, total)``; ``total`` is ``None`` without ``len()``.

        An exception raised for an item (the item's own, or a :class:`BrokenWorkerError` for the
        items of a worker that died) is raised from the iteration, in order, and the calls still
        running are cancelled; so is an exception raised by ``iterable`` itself.
        """
        return MapResults(
            self._core,
            self._options,
            fn,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            max_in_flight=max_in_flight,
            return_exceptions=return_exceptions,
            progress=progress,
        )

    @overload
    def stream(
        self, fn: Callable[P, AsyncIterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamResults[T]: ...

    @overload
    def stream(
        self, fn: Callable[P, Iterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamResults[T]: ...

    def stream(
        self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamResults[Any]:
        """Run the generator ``fn(*args, **kwargs)`` in a worker; iterate its items as it
        yields them.

        ``fn`` may be a generator function or an async generator function. Use ``async for
        item in pool.stream(...)``, or ``async with pool.stream(...) as items``. The generator
        is not resumed while ``buffer`` items (see :meth:`with_options`) wait for the consumer.
        Leaving early, :meth:`StreamResults.aclose`, or a cancellation closes the generator in
        the worker (``GeneratorExit``); a worker whose generator does not finish within
        ``kill_grace`` is killed. The generator's exception is raised after the items before it.
        """
        check_callable("fn", fn)
        return StreamResults(self._core, self._options, fn, args, kwargs)

    @overload
    def open_channel(
        self,
        fn: Callable[Concatenate[AsyncChannelEnd, P], Awaitable[object]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Channel: ...

    @overload
    def open_channel(
        self, fn: Callable[Concatenate[ChannelEnd, P], object], /, *args: P.args, **kwargs: P.kwargs
    ) -> Channel: ...

    def open_channel(
        self, fn: Callable[Concatenate[Any, P], object], /, *args: P.args, **kwargs: P.kwargs
    ) -> Channel:
        """Call ``fn(channel_end, *args, **kwargs)`` in a worker, with a two-way channel to it.

        Use ``async with pool.open_channel(fn, ...) as channel``: the block starts the worker,
        and leaving it closes the channel (see :meth:`Channel.aclose`), or kills the worker if
        it is left by an exception or a cancellation, as for :meth:`run`.

        ``channel_end`` is a :class:`ChannelEnd` (blocking ``send``, ``recv``, ``poll`` and
        iteration, as an end of :func:`multiprocessing.Pipe`), or an :class:`AsyncChannelEnd`
        (the same, awaitable) when ``fn`` is an ``async def``. Each direction holds at most
        ``buffer`` items (see :meth:`with_options`) that the other side has not taken.
        """
        check_callable("fn", fn)
        return Channel(self._core, self._options, fn, args, kwargs)

    def close(self) -> None:
        """Accept no more calls. Calls already accepted go on; see :meth:`join`."""
        self._core.closed = True

    async def join(self) -> None:
        """Wait for every accepted call to finish, then stop the workers.

        Raises:
            RuntimeError: the pool was not closed or terminated first.
        """
        core = self._core
        if not core.closed:
            raise RuntimeError("close() or terminate() the pool before join()")
        await core.wait_all_done()
        await core.stop_idle_workers(terminate=False)
        core.stop_keeping_spare_files()

    async def terminate(self) -> None:
        """Stop every worker now. Running and waiting calls raise :class:`PoolClosedError`.

        Shielded from cancellation: when this returns, no worker process remains.
        """
        with anyio.CancelScope(shield=True):
            await self._core.terminate()

    def stats(self) -> PoolStats:
        """Current counts of workers and calls."""
        return self._core.stats()

    async def __aenter__(self) -> Pool:
        """Enter the pool's block: see the class's description.

        Raises:
            PoolClosedError: the pool was closed or terminated already.
        """
        self._core.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self.terminate()
            return
        self.close()
        try:
            await self.join()
        except BaseException:
            await self.terminate()
            raise

    def __repr__(self) -> str:
        core = self._core
        state = "terminated" if core.terminated else "closed" if core.closed else "open"
        return (
            f"<anypool.Pool {state} max_workers={core.max_workers} "
            f"start_method={core.start_method!r} workers={len(core.idle) + len(core.busy)}>"
        )


Pool.__module__ = "anypool"
PoolStats.__module__ = "anypool"
CallOptions.__module__ = "anypool"


def _preload_worker_module_in_forkserver() -> None:
    """Have multiprocessing's forkserver import the worker module once, so that each worker
    forked from it starts with it loaded; and, for an application run as ``python -m``, what
    its main module imports. Only effective before the forkserver starts."""
    forkserver = multiprocessing.forkserver._forkserver
    # Keep what the application asked the forkserver to preload (default: ["__main__"]).
    preload = list(getattr(forkserver, "_preload_modules", ["__main__"]))
    wanted = [_WORKER_MODULE]
    names = _main_module_imports() if "__main__" in preload else ()
    if names:
        # Through a module of ours that skips what fails to import: the forkserver lets only
        # an ImportError pass, and any other error of a module preloaded by name would end it,
        # and with it every worker start.
        os.environ.setdefault(protocol.PRELOAD_VARIABLE, ",".join(names))
        wanted.append(_PRELOAD_MODULE)
    missing = [name for name in wanted if name not in preload]
    if missing:
        forkserver.set_forkserver_preload([*preload, *missing])


@functools.cache
def _main_module_imports() -> tuple[str, ...]:
    """The modules the main module imports at its top level, if it was run with ``-m``.

    multiprocessing preloads a main *script* in the forkserver, by its path, but a main module
    run with ``-m`` not at all, while each worker imports it again (for the functions it
    defines): every worker start would pay for the application's imports, some 100 ms for a
    real one. Preloading the main module itself would make each worker's import of it warn
    (runpy finds it imported already), so what it imports is preloaded instead: the modules
    already imported here.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    # (Workers do not import a package's __main__ again: nothing to preload for it.)
    if spec is None or spec.name.rpartition(".")[2] == "__main__" or not isinstance(path, str):
        return ()
    try:
        with open(path, "rb") as source:
            statements = ast.parse(source.read()).body
    except (OSError, SyntaxError, ValueError):
        return ()
    names: list[str] = []
    for statement in statements:
        if isinstance(statement, ast.Import):
            names += [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom):
            try:
                module = importlib.util.resolve_name(
                    "." * statement.level + (statement.module or ""), spec.parent
                )
            except (ImportError, ValueError):
                continue
            names.append(module)
            # `from package import module` imports the module too.
            names += [f"{module}.{alias.name}" for alias in statement.names]
    return tuple(name for name in dict.fromkeys(names) if name in sys.modules)
