"""Soak: many calls through one pool, and the parent neither grows nor leaks.

``ANYPOOL_SOAK_CALLS`` calls of ``pool.run`` (default 20 000, a few seconds per backend, so the
main suite runs it as a smoke test) go through a 2-worker pool from a few concurrent callers.
Every so often a caller also runs a small ``pool.map`` or ``pool.stream``, a call that raises, or
a call it cancels (which kills that worker), and ``max_tasks_per_worker`` recycles workers: the
paths that start, stop and reap workers run throughout.

After a warm-up (the first 10 % of the calls) the parent's RSS must grow less than 10 % by the
end, and its descriptors and child processes must not pile up.

``make soak`` (a step of its own in ``.ci/run``) runs the full size, 1 000 000 calls, on all
three backends (asyncio, asyncio + uvloop, trio): 165 to 225 s each on 2 cores, about 11
minutes for the whole step.
"""

from __future__ import annotations

import gc
import os
import time

import anyio
import psutil
import pytest

import anypool
import workers
from support import descendants

SOAK_CALLS = int(os.environ.get("ANYPOOL_SOAK_CALLS", "20000"))
WARM_UP = SOAK_CALLS // 10

MAX_WORKERS = 2
CALLERS = 4
MAX_TASKS_PER_WORKER = 5_000

# Every MIX_EVERY calls a caller also runs a map (at offset 0) and a stream (at offset half).
MIX_EVERY = 100
MIX_ITEMS = 20
ERROR_EVERY = 1_000
CANCEL_EVERY = 10_000

RSS_GROWTH = 0.10
# A live worker holds two descriptors in the parent (its pipe, and the status pipe the fork
# server reports its exit on); a worker let go (recycled) keeps the last until the pool reaps
# it, at the next let-go. The counts vary with that timing only.
FD_SLACK = 3 * MAX_WORKERS
PROCESS_SLACK = 1

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.soak,
    # About 150 microseconds a call on 2 cores; ten times that, and a minute to spare.
    pytest.mark.timeout(60 + SOAK_CALLS * 15 // 10_000),
]


class Soak:
    def __init__(self, pool: anypool.Pool) -> None:
        self.pool = pool
        self.errors = 0
        self.cancelled = 0
        self.mixed = 0

    async def one(self, i: int) -> None:
        """Call number ``i``: a ``pool.run``, and now and then something else with it."""
        pool = self.pool
        assert await pool.run(workers.identity, i) == i
        if i % MIX_EVERY == 0:
            items = range(i, i + MIX_ITEMS)
            chunksize = "auto" if i % (2 * MIX_EVERY) == 0 else 1
            async with pool.map(workers.square, items, chunksize=chunksize) as results:
                assert [result async for result in results] == [x * x for x in items]
            self.mixed += 1
        elif i % MIX_EVERY == MIX_EVERY // 2:
            async with pool.stream(workers.count_up, MIX_ITEMS) as stream:
                assert [item async for item in stream] == list(range(MIX_ITEMS))
            self.mixed += 1
        if i % ERROR_EVERY == ERROR_EVERY // 3:
            with pytest.raises(ValueError, match=f"^soak {i}$"):
                await pool.run(workers.raise_value_error, f"soak {i}")
            self.errors += 1
        if i % CANCEL_EVERY == CANCEL_EVERY // 2:
            with anyio.move_on_after(0.05) as scope:
                await pool.run(workers.sleep_then_return, 30, "not cancelled")
            assert scope.cancelled_caught
            self.cancelled += 1

    async def calls(self, start: int, stop: int) -> None:
        """Calls ``start`` to ``stop - 1``, shared among the concurrent callers."""

        async def caller(first: int) -> None:
            for i in range(first, stop, CALLERS):
                await self.one(i)

        async with anyio.create_task_group() as group:
            for offset in range(CALLERS):
                group.start_soon(caller, start + offset)


class Footprint:
    """The parent's RSS, open descriptors and child processes, after a full collection."""

    def __init__(self) -> None:
        gc.collect()
        self.rss = psutil.Process().memory_info().rss
        self.fds = len(os.listdir("/proc/self/fd"))
        self.processes = len(descendants())

    def __repr__(self) -> str:
        return f"RSS {self.rss / (1 << 20):.1f} MiB, {self.fds} fds, {self.processes} processes"


async def test_many_calls_neither_grow_the_parent_nor_leak(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    async with anypool.Pool(MAX_WORKERS, max_tasks_per_worker=MAX_TASKS_PER_WORKER) as pool:
        soak = Soak(pool)
        await soak.calls(0, WARM_UP)
        warm = Footprint()
        await soak.calls(WARM_UP, SOAK_CALLS)
        end = Footprint()
        stats = pool.stats()
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\nsoak: {SOAK_CALLS} calls (+{soak.mixed} maps/streams, {soak.errors} errors, "
            f"{soak.cancelled} cancelled) in {elapsed:.1f} s; after warm-up: {warm}; end: {end}"
        )
    assert end.rss < warm.rss * (1 + RSS_GROWTH), (
        f"RSS grew {end.rss / warm.rss - 1:.1%} after the warm-up: {warm} -> {end}"
    )
    assert end.fds <= warm.fds + FD_SLACK, f"descriptors piled up: {warm} -> {end}"
    assert end.processes <= MAX_WORKERS + PROCESS_SLACK, f"processes piled up: {warm} -> {end}"
    assert stats.calls_failed == soak.errors
    assert stats.calls_cancelled == soak.cancelled
    # Each chunk of a map counts as a call.
    assert stats.calls_completed >= SOAK_CALLS + soak.mixed
