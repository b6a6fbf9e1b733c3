"""The local backend's workers: which are idle, busy, starting or leaving; which call gets a
worker next (strictly first come, first served); starting, handing back and reaping them."""

from __future__ import annotations

import functools
import multiprocessing
import signal
import time
from collections import deque
from multiprocessing.context import BaseContext
from typing import Final

import anyio
import anyio.to_thread

from ..._errors import InitializerError, PoolClosedError
from ..._eventloop import Wakeup
from ..._serialize import load_error
from ..._stats import CallCounters
from .._base import PendingCalls
from . import wire
from .handle import WorkerHandle
from .sendahead import SendAhead, Slot
from .transport import ChannelClosed

__all__ = ["FIRST_START_DELAY", "MAX_START_DELAY", "WorkerCache"]

FIRST_START_DELAY: Final = 0.1
"""Seconds a new worker waits to start after one whose initializer raised."""
MAX_START_DELAY: Final = 5.0
"""The longest wait before a new worker starts, however often the initializer raised."""


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
        self.slot: Slot | None = None
        """Set with ``worker`` when the call is to be sent behind the call that worker runs;
        if it was sent already, ``event`` is the slot's turn."""


class WorkerCache:
    """The worker processes of one pool, and the calls waiting for one.

    Exactly one party owns a busy worker (the call it runs, a stream, a channel, a map's lane,
    or the drain of an abandoned call) and hands it back with :meth:`release` or
    :meth:`finish`, or stops it with :meth:`stop_busy`.
    """

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

        # Idle workers, the most recently used last: reusing it keeps caches warm, and lets the
        # least recently used ones reach idle_timeout and retire.
        self.idle: list[WorkerHandle] = []
        # Workers lent to a call (or to the drain of an abandoned call).
        self.busy: set[WorkerHandle] = set()
        # Workers the pool let go of and has not yet reaped.
        self.leaving: set[WorkerHandle] = set()
        self.starting = 0
        self.waiters: deque[_Waiter] = deque()
        self.ahead = SendAhead(self)

        self.terminated = False
        self.pending = PendingCalls()

        self.counters = CallCounters()
        """The calls of every kind the pool ran: counted by whoever reads their outcome."""
        self.workers_replaced = 0
        self.initializer_failures = 0  # in a row
        self.start_not_before = 0.0  # time.monotonic() before which no worker starts

    # --- admission -------------------------------------------------------------------------

    def has_capacity(self) -> bool:
        return len(self.idle) + len(self.busy) + self.starting < self.max_workers

    async def acquire(self) -> WorkerHandle:
        """A worker for one call: an idle one, a new one, or the first one freed, in FIFO order."""
        worker, _ = await self.acquire_place(None, True)
        return worker

    async def acquire_place(
        self, payload: bytes | None, kill_on_cancel: bool
    ) -> tuple[WorkerHandle, Slot | None]:
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
            if payload is not None and (worker := self.ahead.queueable_worker()) is not None:
                return worker, self.ahead.reserve_slot(worker)
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
                self.counters.ended("cancelled")
                await self.ahead.drop(waiter.worker, waiter.slot)
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
            worker = self.ahead.queueable_worker()
            if worker is None:
                return
            waiter = self.waiters.popleft()
            waiter.worker = worker
            # Sent now, the call sleeps on until its turn: a task step fewer than waking it
            # to send. (Should the pipe take nothing now, it is woken to send.)
            waiter.slot = slot = self.ahead.reserve_slot(worker, turn=waiter.event)
            slot.kill_on_cancel = waiter.kill_on_cancel
            frame = self.ahead.number_queued(worker, slot) + payload
            if worker.channel.send_nowait(wire.QUEUED, frame):
                slot.sent = True
                self.counters.started()
            else:
                slot.turn = Wakeup()
                waiter.event.set()

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
            message = (wire.RETIRING, b"")
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
        self.ahead.queueable.pop(worker, None)
        slot = self.ahead.queued.pop(worker, None)
        if slot is None:
            self.release(worker)
        elif slot.dropped:
            self.ahead.resolve_dropped(worker, slot)
        else:
            # The slot's call reads the worker's pipe from now on. It may not have started
            # yet, but it is the worker's next call: once it is sent, so may the one after it
            # be (not before: the worker runs calls in the order they reach it).
            if slot.sent:
                # Its task reads STARTED, then waits for the outcome: woken once that is here.
                worker.channel.set_when_more_arrives(slot.turn, wire.STARTED)
                self.ahead.running(worker)
            else:
                slot.turn.set()  # to send its call

    def withdraw(self, worker: WorkerHandle, slot: Slot) -> None:
        """Give up the place behind a busy worker's call, before the call was sent there."""
        if self.ahead.queued.get(worker) is slot:
            del self.ahead.queued[worker]
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
        slot = self.ahead.take_place(worker)
        # Terminated with a call queued behind: what it left in its pipe says whether it
        # started that call.
        keep_pipe = slot is not None and terminate
        try:
            return await worker.stop(self.kill_grace, terminate=terminate, keep_pipe=keep_pipe)
        finally:
            if slot is not None:
                started = (wire.STARTED, wire.COUNT.pack(slot.number))
                lost = not slot.dropped and started in self.ahead.leftover_frames(worker)
                self.ahead.tell(slot, "lost" if lost else "retry")
            if keep_pipe:
                worker.close_pipe()
            self.busy.discard(worker)
            if replaced and not self.terminated:
                self.workers_replaced += 1
            self.dispatch()

    def let_go(self, worker: WorkerHandle) -> None:
        """Close a worker's pipe so that it exits; it is reaped later."""
        worker.close_pipe()
        self.leaving.add(worker)
        # Reap the ones already gone without waiting, so that none lingers as a zombie.
        for gone in [w for w in self.leaving if w.poll_exited()]:
            self.leaving.discard(gone)

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
        if (slot := self.ahead.take_place(worker)) is not None:
            self.ahead.tell(slot, "retry")  # it read nothing more
        self.let_go(worker)

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
        """Stop every worker; calls running or waiting raise :class:`PoolClosedError`."""
        self.terminated = True
        for waiter in self.waiters:
            waiter.event.set()
        self.waiters.clear()
        # Busy workers belong to their calls, which reap them once the pipe closes.
        for worker in self.busy:
            worker.signal(signal.SIGTERM)
        async with anyio.create_task_group() as group:
            group.start_soon(functools.partial(self.stop_idle_workers, terminate=True))
            with anyio.move_on_after(self.kill_grace):
                await self.pending.wait_all_done()
            for worker in self.busy:
                worker.signal(signal.SIGKILL)
            await self.pending.wait_all_done()

    def shutdown_now(self, grace: float) -> None:
        """Stop every worker, blocking: for interpreter exit, when no event loop is left, or a
        pool that was dropped unclosed. Busy workers are killed; idle ones are given ``grace``
        seconds to exit."""
        self.terminated = True
        for worker in self.busy:
            worker.signal(signal.SIGKILL)
        for worker in [*self.idle, *self.busy, *self.leaving]:
            worker.stop_now(grace)
        self.idle.clear()
        self.busy.clear()
        self.leaving.clear()
