"""``pool.map`` on the local backend: lanes, each a task that runs a map's chunks on one worker
at a time; a worker that runs short chunks holds the next one already, so that it never waits
for the parent between two."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import anyio.abc

from ..._errors import InitializerError
from ..._eventloop import current_library
from ..._serialize import Payload, dumps_call_arguments, load_error, load_result
from .._base import Chunk, ChunkFeed, ChunkRunner
from . import wire
from .child.worker import apply_to_chunk
from .handle import WorkerHandle
from .replies import Retired, drain_in_background, reply
from .transport import ChannelClosed
from .workers import WorkerCache

__all__ = ["LaneRunner", "pack_chunk"]

_QUEUE_DEPTH: Final = 2
"""The most chunks a worker is sent at once: while it runs one, the next waits in its pipe."""
_QUEUE_SECONDS: Final = 0.05
"""A worker is sent a chunk behind the one it runs only if its last chunk ran for less than
this: a queued chunk cannot go to another worker that frees up first, and for longer chunks
the moment a worker waits between two is a small part of their time anyway."""


def pack_chunk(
    fn: Callable[[Any], Any], items: Sequence[Any], *, raise_first: bool
) -> tuple[Payload, int]:
    """The pickled call of ``fn`` over ``items`` in a worker, and its size."""
    event_loop = current_library()
    call: tuple[Any, ...] = (apply_to_chunk, (fn, items, event_loop, raise_first), {}, event_loop)
    payload = dumps_call_arguments(call, fn, items, {}, large_bytes=False)
    return payload, len(payload)


class _Lane:
    """A task of a map's that runs its chunks on one worker at a time."""

    __slots__ = ("last_seconds", "pending", "sender", "sent")

    def __init__(self) -> None:
        self.pending: deque[Chunk] = deque()
        """Chunks for the lane's worker, in order, whose outcome has not come back."""
        self.sent = 0
        """How many of them (from the first) have been written to the worker in full."""
        self.sender: tuple[anyio.CancelScope, anyio.Event] | None = None
        """The scope and the end of the task that writes the others, while there is one."""
        self.last_seconds = math.inf
        """How long the last chunk ran in the worker."""


class LaneRunner(ChunkRunner):
    """Runs one map's chunks in lanes, as many as the pool has workers."""

    def __init__(
        self,
        cache: WorkerCache,
        feed: ChunkFeed,
        group: anyio.abc.TaskGroup,
        kill_on_cancel: bool,
    ) -> None:
        self._cache = cache
        self._feed = feed
        self._group = group
        self._kill_on_cancel = kill_on_cancel
        self._lanes: set[_Lane] = set()

    def more(self) -> None:
        """Start lanes for the chunks that no lane is about to take, as workers allow."""
        hungry = sum(not lane.pending for lane in self._lanes)
        while len(self._feed.to_run) > hungry and len(self._lanes) < self._cache.max_workers:
            lane = _Lane()
            self._lanes.add(lane)
            # A lane is a call of the pool's for close() and join(), from now until it ends.
            self._cache.accepted += 1
            self._group.start_soon(self._run_lane, lane)
            hungry += 1

    async def _run_lane(self, lane: _Lane) -> None:
        """Take chunks on a worker of the pool's until none is left: a worker at a time,
        acquired in order with the pool's other calls."""
        feed = self._feed
        try:
            while feed.to_run and not feed.closed:
                try:
                    worker = await self._cache.acquire()
                except Exception as error:
                    # No worker (the pool was terminated, a worker could not start): the next
                    # chunk gets the error.
                    if feed.to_run:
                        feed.chunk_failed(feed.to_run.popleft(), error)
                    continue
                await self._serve(lane, worker)
        finally:
            self._lanes.discard(lane)
            self._cache.call_finished()

    async def _serve(self, lane: _Lane, worker: WorkerHandle) -> None:
        """Run chunks on ``worker`` until there are none to take, or a call of the pool's
        waits for a worker; then give the worker back, or stop it if it died or the map
        was cancelled."""
        cache, feed, counters = self._cache, self._feed, self._cache.counters
        pending = lane.pending
        current: WorkerHandle | None = worker
        # Whether the worker ran a chunk for us yet: only then does it go back to the calls
        # waiting for one (lanes of other maps would otherwise pass workers round for ever).
        served = False

        async def stop_sending() -> None:
            await self._stop_sending(lane)

        try:
            while True:
                await self._send_chunks(lane, worker, served)
                if not pending:
                    await self._stop_sending(lane)
                    current = None
                    cache.release(worker)
                    return
                try:
                    kind, body = await reply(cache, worker, "the call to", feed.fn, stop_sending)
                except Retired:
                    # It retired before it read any of them: send them all to another.
                    await self._stop_sending(lane)
                    lane.sent = 0
                    current = None
                    try:
                        worker = await cache.replace_retired(worker)
                    except Exception as error:
                        counters.ended("aborted", len(pending))
                        while pending:
                            feed.chunk_failed(pending.popleft(), error)
                        return
                    current = worker
                    continue
                except Exception as error:
                    # The worker died running the first chunk it was sent, or its initializer
                    # failed; the others never started (it reads a call only once it answered
                    # the one before). It was reaped.
                    current = None
                    chunk = pending.popleft()
                    counters.ended_with(error)
                    if isinstance(error, InitializerError):
                        self._requeue(lane)
                        feed.chunk_failed(chunk, error)
                    else:
                        feed.chunk_failed(chunk, error)
                        self._requeue(lane)
                    return
                chunk = pending.popleft()
                lane.sent -= 1
                worker.calls += 1
                served = True
                if kind == wire.RESULT:
                    # Keep the worker busy before this chunk's results are unpickled.
                    await self._send_chunks(lane, worker, served)
                    self._finish(lane, chunk, body)
                else:
                    counters.ended("failed")
                    feed.chunk_failed(chunk, load_error(body))
        except BaseException:
            # Cancelled, or the event loop is ending, while the worker holds chunks.
            with anyio.CancelScope(shield=True):
                await self._stop_sending(lane)
            counters.ended("cancelled", len(pending))
            if current is None:
                pass
            elif current.channel.cut_short:
                # A frame cut short leaves the pipe unusable.
                await cache.stop_busy(current, terminate=True)
            elif not lane.sent:
                cache.release(current)  # it was sent nothing
            elif self._kill_on_cancel or cache.terminated:
                await cache.stop_busy(current, terminate=True)
            else:
                # It runs the chunks it was sent in full to their end.
                drain_in_background(cache, current, lane.sent)
            pending.clear()
            lane.sent = 0
            raise

    async def _send_chunks(self, lane: _Lane, worker: WorkerHandle, served: bool) -> None:
        """Take the ready chunks that ``worker`` should hold, and see that it is sent them;
        none if it ``served`` the lane already and calls wait for a worker.

        A worker that holds nothing yet is sent its chunk here. The chunks queued behind the
        one it runs go through a task of their own: a frame too large for the pipe would
        otherwise wait for the worker to read it, while the worker waits for us to read the
        results it is writing.
        """
        feed = self._feed
        pending = lane.pending
        while feed.to_run and not feed.closed and (not pending or self._may_queue(lane, worker)):
            if not pending and ((served and self._cache.waiters) or self._worn_out(worker, 0)):
                # Others wait for a worker: give this one back and queue up behind them. Or it
                # ran as many calls as the pool allows: give it back to be replaced.
                break
            pending.append(feed.to_run.popleft())
            self._cache.counters.started()
        if not lane.sent and pending and lane.sender is None:
            try:
                await worker.channel.send(wire.CALL, pending[0].packed)
            except ChannelClosed:
                # The worker is gone: the receiving side learns how (its answers before the
                # end-of-file are still to be read).
                return
            lane.sent = 1
        if lane.sent < len(pending) and lane.sender is None:
            lane.sender = sender = (anyio.CancelScope(), anyio.Event())
            self._group.start_soon(self._send_queued, lane, worker, sender)

    async def _send_queued(
        self, lane: _Lane, worker: WorkerHandle, sender: tuple[anyio.CancelScope, anyio.Event]
    ) -> None:
        """Write the lane's chunks not yet written to ``worker``, in order, until none is left
        or ``sender``'s scope is cancelled."""
        scope, done = sender
        try:
            with scope:
                while lane.sent < len(lane.pending):
                    await worker.channel.send(wire.CALL, lane.pending[lane.sent].packed)
                    # (The receiving side removes the chunks answered from the front: counting
                    # only after the send keeps the count right.)
                    lane.sent += 1
        except ChannelClosed:
            pass  # as in _send_chunks
        finally:
            lane.sender = None
            done.set()

    async def _stop_sending(self, lane: _Lane) -> None:
        """Stop the lane's sending task, and wait until it is gone: before its worker is let go
        or its pipe closed, nothing may be writing to it."""
        if lane.sender is not None:
            scope, done = lane.sender
            scope.cancel()
            await done.wait()

    def _may_queue(self, lane: _Lane, worker: WorkerHandle) -> bool:
        """Whether to send a worker that runs a chunk the next one too, so that it starts
        that one the moment it is done, instead of waiting for the parent."""
        return (
            len(lane.pending) < _QUEUE_DEPTH
            # A chunk queued behind a long one would wait though another worker may be free.
            and lane.last_seconds < _QUEUE_SECONDS
            # Not while another lane waits for its first chunk, nor a call for a worker.
            and all(other.pending for other in self._lanes)
            and not self._cache.waiters
            and not self._worn_out(worker, len(lane.pending))
        )

    def _worn_out(self, worker: WorkerHandle, holding: int) -> bool:
        """Whether ``worker``, with ``holding`` chunks still to run, reaches the pool's
        ``max_tasks_per_worker``."""
        limit = self._cache.max_tasks_per_worker
        return limit is not None and worker.calls + holding >= limit

    def _requeue(self, lane: _Lane) -> None:
        """Put back, first in line, the chunks the lane's worker never started."""
        self._cache.counters.ended("aborted", len(lane.pending))
        self._feed.to_run.extendleft(reversed(lane.pending))
        lane.pending.clear()
        lane.sent = 0
        self.more()

    def _finish(self, lane: _Lane, chunk: Chunk, outcome: Any) -> None:
        feed = self._feed
        try:
            results, failures, seconds = load_result(outcome, feed.fn)
        except Exception as error:
            self._cache.counters.ended("failed")
            feed.chunk_failed(chunk, error)
            return
        self._cache.counters.ended("completed")
        lane.last_seconds = seconds
        feed.chunk_done(chunk, results, failures, seconds)
