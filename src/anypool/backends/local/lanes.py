"""``pool.map`` on the local backend: lanes, each a task that runs a map's chunks on one worker
at a time, as many lanes as the pool has workers."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio
import anyio.abc

from ..._serialize import load_error, load_result
from .._base import Chunk, ChunkFeed, ChunkRunner
from . import wire
from .handle import WorkerHandle
from .replies import Retired, drain_in_background, reply
from .sendahead import QUEUE_BEHIND_SECONDS, QUEUED_MAX_BYTES
from .transport import ChannelClosed
from .workers import WorkerCache

__all__ = ["LaneRunner"]


class _Lane:
    """A task of a map's that runs its chunks on one worker at a time."""

    __slots__ = ("ahead", "chunk", "short")

    def __init__(self) -> None:
        self.chunk: Chunk | None = None
        """The chunk the lane's worker runs (or is about to), whose outcome has not come back."""
        self.ahead: Chunk | None = None
        """The chunk sent to the worker behind ``chunk``, that it starts as soon as ``chunk``
        is over: the worker never waits for the parent between two chunks."""
        self.short = False
        """Whether the lane's last chunk took less than ``QUEUE_BEHIND_SECONDS``."""


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
        hungry = sum(lane.chunk is None for lane in self._lanes)
        while len(self._feed.to_run) > hungry and len(self._lanes) < self._cache.max_workers:
            lane = _Lane()
            self._lanes.add(lane)
            # A lane is a call of the pool's for close() and join(), from now until it ends.
            self._cache.pending.add()
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
            self._cache.pending.finished()

    async def _serve(self, lane: _Lane, worker: WorkerHandle) -> None:
        """Run chunks on ``worker``, one at a time, the next sent behind the one it runs,
        until there are none to take, or a call of the pool's waits for a worker; then give
        the worker back, or stop it if it died or the map was cancelled."""
        cache, feed, counters = self._cache, self._feed, self._cache.counters
        current: WorkerHandle | None = worker
        # Whether the chunk counts as running, and whether any of it was written to the worker.
        running = sent = False
        # Whether the worker ran a chunk for us yet: only then does it go back to the calls
        # waiting for one (lanes of other maps would otherwise pass workers round for ever).
        served = False
        try:
            while True:
                chunk = lane.chunk
                # Sent ahead, the worker starts it as it ends the one before.
                sent_ahead = chunk is not None
                if chunk is None:
                    if not feed.to_run or feed.closed:
                        break
                    if (served and cache.waiters) or self._worn_out(worker, 1):
                        # Others wait for a worker: give this one back and queue up behind
                        # them. Or it ran as many calls as the pool allows: give it back to
                        # be replaced.
                        break
                    chunk = lane.chunk = feed.to_run.popleft()
                counters.started()
                running = True
                if not sent_ahead:
                    # A worker gone already says how in its reply.
                    with contextlib.suppress(ChannelClosed):
                        await worker.channel.send(wire.CALL, chunk.packed)
                sent = True
                started = time.monotonic()
                if lane.ahead is None:
                    self._send_ahead(lane, worker)
                try:
                    kind, body = await reply(cache, worker, "the call to", feed.fn)
                except Retired:
                    # It retired before it read the chunk (or the one behind it): those run on
                    # another worker.
                    counters.ended("aborted")
                    running = sent = False
                    current = None
                    self._put_back(lane)
                    try:
                        worker = await cache.replace_retired(worker)
                    except Exception as error:
                        if feed.to_run:
                            feed.chunk_failed(feed.to_run.popleft(), error)
                        return
                    current = worker
                    continue
                except Exception as error:
                    # The worker died running the chunk, or its initializer failed: reaped.
                    # The chunk behind it never started.
                    current = None
                    running = False
                    counters.ended_with(error)
                    lane.chunk = None  # (failed: not put back)
                    self._put_back(lane)
                    feed.chunk_failed(chunk, error)
                    return
                running = sent = False
                worker.calls += 1
                served = True
                lane.short = time.monotonic() - started < QUEUE_BEHIND_SECONDS
                lane.chunk, lane.ahead = lane.ahead, None
                if lane.chunk is not None:
                    # Before this chunk's results are unpickled, which the worker need not
                    # wait for.
                    self._send_ahead(lane, worker)
                if kind == wire.RESULT:
                    self._finish(chunk, body)
                else:
                    counters.ended("failed")
                    feed.chunk_failed(chunk, load_error(body))
            current = None
            cache.release(worker)
        except BaseException:
            # Cancelled, or the event loop is ending, while the worker may hold a chunk, and
            # one behind it.
            if running:
                counters.ended("cancelled")
            if current is None:
                pass
            elif current.channel.cut_short:
                # A frame cut short leaves the pipe unusable.
                await cache.stop_busy(current, terminate=True)
            elif not sent:
                cache.release(current)  # it was sent nothing
            elif self._kill_on_cancel or cache.terminated:
                await cache.stop_busy(current, terminate=True)
            else:
                # It runs the chunks it was sent to their end.
                drain_in_background(cache, current, calls=1 if lane.ahead is None else 2)
            raise

    def _send_ahead(self, lane: _Lane, worker: WorkerHandle) -> None:
        """Send the next chunk to ``worker`` behind the one it runs, if the pipe takes it now,
        no other worker could take it (none idle, no room for another, no call waiting), and
        the chunks are short: a chunk sent to a worker cannot go to another that frees up
        first, and for longer chunks the moment a worker waits between two is a small part of
        their time anyway."""
        feed, cache = self._feed, self._cache
        if (
            not lane.short
            or not feed.to_run
            or feed.closed
            or cache.waiters
            or cache.idle
            or cache.has_capacity()
            or self._worn_out(worker, 2)
        ):
            return
        packed = feed.to_run[0].packed
        # A frame of bytes that the pipe takes whole: a frame written in part holds up the
        # frames behind it, and its rest would be written by a task of its own.
        if (
            type(packed) is bytes
            and len(packed) <= QUEUED_MAX_BYTES
            and worker.channel.send_nowait(wire.CALL, packed)
        ):
            lane.ahead = feed.to_run.popleft()

    def _put_back(self, lane: _Lane) -> None:
        """Give the feed back the chunks the lane's worker never started, first in line."""
        for chunk in (lane.ahead, lane.chunk):
            if chunk is not None:
                self._feed.to_run.appendleft(chunk)
        lane.chunk = lane.ahead = None

    def _worn_out(self, worker: WorkerHandle, calls: int) -> bool:
        """Whether ``calls`` more would take ``worker`` past the pool's
        ``max_tasks_per_worker``."""
        limit = self._cache.max_tasks_per_worker
        return limit is not None and worker.calls + calls > limit

    def _finish(self, chunk: Chunk, outcome: Any) -> None:
        feed = self._feed
        try:
            results, failures, seconds = load_result(outcome, feed.fn)
        except Exception as error:
            self._cache.counters.ended("failed")
            feed.chunk_failed(chunk, error)
            return
        self._cache.counters.ended("completed")
        feed.chunk_done(chunk, results, failures, seconds)
