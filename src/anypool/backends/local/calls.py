"""``pool.run`` on the local backend: one call on one worker, from the wait for a worker to the
outcome read, through a cancellation at any point of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..._errors import BrokenWorkerError, PoolClosedError
from ..._serialize import Payload, describe
from .._base import deliver
from . import wire
from .handle import WorkerHandle
from .replies import Retired, drain_in_background, lost, reply
from .sendahead import QUEUED_MAX_BYTES, Slot
from .transport import ChannelClosed
from .workers import WorkerCache

__all__ = ["CallRunner"]


class CallRunner:
    """Runs the pool's calls on its workers, sending them ahead where that pays."""

    def __init__(self, cache: WorkerCache) -> None:
        self.cache = cache
        self.ahead = cache.ahead

    async def run(self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool) -> Any:
        """Run a pickled call to ``fn`` on a worker; return its result, or raise its error."""
        cache = self.cache
        cache.pending.add()
        try:
            # Only a small call may wait in a busy worker's pipe.
            small = payload if type(payload) is bytes and len(payload) <= QUEUED_MAX_BYTES else None
            worker, slot = await cache.acquire_place(small, kill_on_cancel)
            while True:
                try:
                    if slot is None:
                        cache.counters.started()
                        return await self.outcome(worker, fn, kill_on_cancel, send=payload)
                    assert small is not None
                    return await self.run_queued(worker, slot, fn, small, kill_on_cancel)
                except Retired:
                    # The worker never started it: run it on another.
                    if slot is None:
                        worker = await cache.replace_retired(worker)
                    else:
                        worker, slot = await cache.acquire_place(small, kill_on_cancel)
        finally:
            cache.pending.finished()

    async def run_queued(
        self,
        worker: WorkerHandle,
        slot: Slot,
        fn: Callable[..., Any],
        payload: bytes,
        kill_on_cancel: bool,
    ) -> Any:
        """Run a call on a busy worker, sent now (unless the pool sent it already) to start
        once the call it runs is over.

        Raises:
            Retired: the worker is gone and never started the call.
        """
        cache = self.cache
        if not slot.sent:
            slot.kill_on_cancel = kill_on_cancel
            try:
                # Whole: cut short, the frame would break the pipe for the call ahead too.
                await worker.channel.send(
                    wire.QUEUED, self.ahead.number_queued(worker, slot) + payload, whole=True
                )
            except ChannelClosed:
                # The worker is gone or going; whoever reads its pipe sees to it.
                cache.withdraw(worker, slot)
                raise Retired from None
            except BaseException:
                # Cancelled before a byte of it was sent.
                cache.withdraw(worker, slot)
                raise
            slot.sent = True
            if slot.turn.is_set and slot.fate is None:
                self.ahead.running(worker)  # (see WorkerCache.finish)
            cache.counters.started()
        try:
            await slot.turn.wait()
            if slot.fate is None:
                kind, body = await worker.receive()
        except ChannelClosed:
            # Gone before it said a word of this call.
            cache.counters.ended("aborted")
            await cache.stop_busy(worker, terminate=False)
            raise Retired from None
        except BaseException:
            cache.counters.ended("cancelled")
            await self.ahead.drop(worker, slot)
            raise
        if slot.fate == "retry" or (slot.fate is None and kind == wire.RETIRING):
            cache.counters.ended("aborted")
            if slot.fate is None:
                cache.let_go_retired(worker)
            raise Retired
        if slot.fate == "lost":
            what = f"the call to {describe(fn)}"
            error: Exception = (
                PoolClosedError(f"the pool was terminated during {what}")
                if cache.terminated
                else BrokenWorkerError(worker.pid, worker.exitcode, what)
            )
            cache.counters.ended_with(error)
            raise error
        assert (kind, body) == (wire.STARTED, wire.COUNT.pack(slot.number)), kind
        return await self.outcome(worker, fn, kill_on_cancel)

    async def outcome(
        self,
        worker: WorkerHandle,
        fn: Callable[..., Any],
        kill_on_cancel: bool,
        send: Payload | None = None,
    ) -> Any:
        """The outcome of the call the worker runs (sent first, if ``send`` is given): its
        result, or its error raised."""
        cache = self.cache
        sent = send is None
        try:
            if send is not None:
                try:
                    await worker.channel.send(wire.CALL, send)
                except ChannelClosed:
                    raise await lost(cache, worker, "the call to", fn) from None
                sent = True
                # Only now may a call be sent behind it: the worker runs calls in pipe order.
                self.ahead.running(worker)
            kind, body = await reply(cache, worker, "the call to", fn)
        except Retired:
            cache.counters.ended("aborted")
            raise
        except Exception as error:
            cache.counters.ended_with(error)
            raise
        except BaseException:
            # Cancelled (or interrupted) while the worker runs the call.
            cache.counters.ended("cancelled")
            if sent and not kill_on_cancel and not cache.terminated:
                drain_in_background(cache, worker)
            else:
                # A frame cut short by the cancellation leaves the pipe unusable: kill anyway.
                await self.ahead.stop_cancelled(worker)
            raise
        worker.calls += 1
        worker.last_call_seconds = time.monotonic() - worker.call_started
        cache.finish(worker)
        return deliver(cache.counters, kind, body, fn)
