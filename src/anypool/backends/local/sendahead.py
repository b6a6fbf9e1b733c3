"""Calls sent ahead: when every worker is busy with short calls, ``pool.run`` sends the next
small call to a busy worker, to start the moment the call it runs is over, so that the worker
never waits for the parent between two calls.

Such a call travels as QUEUED with a number; the worker announces it (STARTED) before it starts
it, or skips it (SKIPPED) if a DROP of that number came first: the pool always knows whether it
started. See ``wire`` for the messages, and ``calls`` for the call's own side.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from ..._eventloop import Wakeup, spawn_detached
from . import wire
from .handle import CAN_PAUSE, WorkerHandle
from .replies import drain_in_background
from .transport import ChannelClosed

if TYPE_CHECKING:
    from .workers import WorkerCache

__all__ = ["QUEUED_MAX_BYTES", "SendAhead", "Slot"]

QUEUE_BEHIND_SECONDS: Final = 0.005
"""When every worker is busy, a call may be sent to one to start as soon as the call it runs is
over, if that worker's last call took less than this and the one it runs started less than this
ago. A call sent to a worker cannot go to another one that frees up first; for longer calls the
moment a worker waits between two is a small part of their time anyway."""
QUEUED_MAX_BYTES: Final = 64 * 1024
"""Larger calls wait for a worker that is free: a call sent ahead must fit in the pipe."""


class Slot:
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


class SendAhead:
    """The busy workers that may be sent a call behind the one they run, and the calls sent
    (or about to be) behind a worker's call, one per worker at most."""

    def __init__(self, cache: WorkerCache) -> None:
        self.cache = cache
        # Busy workers running a short call (see QUEUE_BEHIND_SECONDS) that may be sent the next
        # call behind it, with the time until which that call counts as short.
        self.queueable: dict[WorkerHandle, float] = {}
        # The call sent (or about to be) to a busy worker behind the call it runs, until that
        # call is over. One per worker: a call waits in a worker's pipe behind one call at most.
        self.queued: dict[WorkerHandle, Slot] = {}

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

    def reserve_slot(self, worker: WorkerHandle, turn: Wakeup | None = None) -> Slot:
        slot = self.queued[worker] = Slot(turn)
        return slot

    @staticmethod
    def number_queued(worker: WorkerHandle, slot: Slot) -> bytes:
        """Number the slot's call among the QUEUED calls of its worker; the number's bytes."""
        worker.queued_calls += 1
        slot.number = worker.queued_calls
        return wire.COUNT.pack(slot.number)

    def running(self, worker: WorkerHandle) -> None:
        """A call starts on the worker: it may be sent the next one behind it if it is short."""
        now = worker.call_started = time.monotonic()
        if (
            worker.last_call_seconds < QUEUE_BEHIND_SECONDS
            and CAN_PAUSE
            and ((limit := self.cache.max_tasks_per_worker) is None or worker.calls + 2 <= limit)
        ):
            self.queueable[worker] = now + QUEUE_BEHIND_SECONDS
            if self.cache.waiters:
                self.cache.dispatch()

    def take_place(self, worker: WorkerHandle) -> Slot | None:
        """The worker will take no call behind its own: forget that it could, and return the
        call queued behind it, if any, for the caller to :meth:`tell` what became of it."""
        self.queueable.pop(worker, None)
        return self.queued.pop(worker, None)

    @staticmethod
    def tell(slot: Slot, fate: Literal["retry", "lost"]) -> None:
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

    async def drop(self, worker: WorkerHandle, slot: Slot) -> None:
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
                await self.cache.stop_busy(worker, terminate=False)
                return
            if frame is not None:
                await self.settle_dropped(worker, slot, frame)
                return
        # Otherwise whoever finishes the call ahead sees the drop and waits for the answer.
        slot.dropped = True
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(ChannelClosed):
                await worker.channel.send(wire.DROP, wire.COUNT.pack(slot.number))
        if reads_the_answer:
            self.resolve_dropped(worker, slot)

    def resolve_dropped(self, worker: WorkerHandle, slot: Slot) -> None:
        """In the background: hear whether the worker skipped a dropped call or had started
        it already, and treat a started one as any cancelled call."""
        self.cache.pending.add()

        async def resolve() -> None:
            try:
                await self.settle_dropped(worker, slot, await worker.receive())
            except ChannelClosed:
                await self.cache.stop_busy(worker, terminate=False)
            except BaseException:
                # The event loop is ending: nobody will wait for this worker any more.
                await self.cache.stop_busy(worker, terminate=True)
            finally:
                self.cache.pending.finished()

        spawn_detached(resolve)

    async def settle_dropped(
        self, worker: WorkerHandle, slot: Slot, answer: tuple[int, bytes | bytearray]
    ) -> None:
        """Stop or reuse the worker of a queued call that was cancelled once the call ahead of
        it was over, given the worker's first word after that call."""
        kind = answer[0]
        if kind == wire.RETIRING:
            self.cache.let_go_retired(worker)
            self.cache.dispatch()
        elif kind == wire.SKIPPED:
            self.cache.finish(worker)
        else:
            assert answer == (wire.STARTED, wire.COUNT.pack(slot.number)), kind
            if slot.kill_on_cancel or self.cache.terminated:
                await self.stop_cancelled(worker)
            else:
                drain_in_background(self.cache, worker)

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
                    self.cache.finish(worker)
                    return
                # It dies as it resumes, before it could start the next call.
                worker.signal(signal.SIGTERM)
            worker.resume()
        await self.cache.stop_busy(worker, terminate=True)

    def outcome_arrived(self, worker: WorkerHandle) -> bool:
        """Whether the outcome of the worker's call has arrived, unread; it is read if so."""
        for kind, _ in self.leftover_frames(worker):
            if kind == wire.RESULT or kind == wire.ERROR:
                return True
            if kind == wire.QUEUE_PUT or kind == wire.QUEUE_GET:
                return False  # the call waits for the answer
        return False
