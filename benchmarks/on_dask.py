"""The Dask section: anypool on Dask against Dask's own API, the same work through each.

Two contenders, each measured like the others (``benchmarks.runner``, in a fresh interpreter):
``anypool on Dask`` (``anypool.Pool(workers, backend=DaskBackend(client))``, its default
``cancel="kill"``: each call runs in a child process of its Dask worker, killed when the call is
cancelled) and ``Dask's own API``: ``client.submit(fn, *args, pure=False)`` on an asynchronous
``Client`` (``Client(address, asynchronous=True)``), its future awaited (``await future``), which
is how Dask's documentation has asyncio programs use it. Dask's other way to wait without a
thread per call, a synchronous ``Client`` whose future's done-callback wakes the loop
(``call_soon_threadsafe``, as anypool's backend does), measured the same here (10.7 ms per
no-op either way, on 2 workers): both wait on the same batching of Dask's messages, the
client's to the scheduler every 10 ms among them; the documented one is kept. Dask's own
cancellation is ``future.cancel()``, which does not stop a task that runs
(dask/distributed#4694): the next task on its worker waits until the cancelled one ends by
itself.

Each run of either contender starts a ``LocalCluster`` of its own (``workers`` worker processes,
one thread each, ``distributed.scheduler.allowed-failures`` 0: a worker that dies fails its task
at once, as with DaskBackend's own cluster) and closes it, none of its processes left behind, so
that neither measures with the other's warm workers; and it warms the cluster up before timing
(the first tasks on a worker import the called function's module, and anypool's worker-side
code). The asynchronous client serves asyncio only: Dask's own API runs there, anypool on
asyncio and trio.

Not part of ``--quick`` unless named (``--only dask``): a LocalCluster takes seconds to start,
which the default test suite does not spend.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

import anypool
from benchmarks.contenders import AnypoolOnEngineSession, Contender, Session
from benchmarks.scenarios import (
    EngineSection,
    Metric,
    Scenario,
    engine_cancel_then_next,
    engine_round_trip,
    engine_stream_throughput,
)

ANYPOOL = "anypool on Dask"
NATIVE = "Dask's own API"

CLOSE_SECONDS = 10.0
"""How long the cluster's processes have to end after it closed before they count as left."""
LONG_CALL_SECONDS = 2.0
"""How long each call that the cancel scenario cancels sleeps. anypool kills it; under Dask's
own API it runs to its end, and the next call waits for it: long enough to be a call worth
cancelling, short enough for the benchmark to wait for it a few dozen times."""


@asynccontextmanager
async def local_dask(workers: int) -> AsyncIterator[Any]:
    """A ``distributed.LocalCluster`` of ``workers`` worker processes, one thread each, started
    now for this process (in a thread: it blocks for seconds) and closed after, none of its
    processes left behind (nor the processes they started: anypool's children)."""
    import dask
    import psutil  # type: ignore[import-untyped, unused-ignore]

    distributed = _distributed()

    before = {process.pid for process in psutil.Process().children(recursive=True)}

    def start() -> Any:
        # A worker that dies fails its task at once, rather than after Dask's retries.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            return distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # (None would take 8787, or warn where it is taken)
            )

    cluster = await anyio.to_thread.run_sync(start)
    try:
        yield cluster
    finally:
        # The cluster's processes and theirs; not a helper that outlives clusters by design
        # (multiprocessing's resource tracker, started with the first nanny).
        started = [
            process
            for process in psutil.Process().children(recursive=True)
            if process.pid not in before and process.pid != _resource_tracker_pid()
        ]
        await anyio.to_thread.run_sync(cluster.close)
        _, alive = psutil.wait_procs(started, timeout=CLOSE_SECONDS)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if alive:
            raise RuntimeError(f"cluster.close() left {len(alive)} of its processes running")


def _distributed() -> Any:
    """Dask's ``distributed``, typed loosely: its constructors have no annotations."""
    import distributed

    return distributed


def _resource_tracker_pid() -> int | None:
    from multiprocessing import resource_tracker

    pid: int | None = getattr(resource_tracker._resource_tracker, "_pid", None)
    return pid


# --- the contenders ----------------------------------------------------------------------------


@asynccontextmanager
async def _open_anypool_on_dask(workers: int) -> AsyncIterator[Session]:
    from anypool.backends import DaskBackend

    distributed = _distributed()

    async with local_dask(workers) as cluster:
        # A synchronous client, as DaskBackend takes: it serves asyncio and trio alike.
        client = await anyio.to_thread.run_sync(
            lambda: distributed.Client(cluster, set_as_default=False)
        )
        try:
            async with anypool.Pool(workers, backend=DaskBackend(client)) as pool:
                yield AnypoolOnEngineSession(pool, batches=False)
        finally:
            await anyio.to_thread.run_sync(client.close)


class _NativeSession(Session):
    """Dask's own API as its documentation shows it on asyncio: an asynchronous ``Client``,
    ``await client.submit(fn, *args, pure=False)``; a cancelled call's future cancelled with
    ``future.cancel()`` (awaited: the scheduler has released it), which lets a task that runs
    run on."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._client.submit(fn, *args, pure=False)
        try:
            return await future
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                await future.cancel()
            raise


@asynccontextmanager
async def _open_native(workers: int) -> AsyncIterator[Session]:
    distributed = _distributed()
    async with local_dask(workers) as cluster:
        client = await distributed.Client(
            cluster.scheduler_address, asynchronous=True, set_as_default=False
        )
        try:
            yield _NativeSession(client)
        finally:
            await client.close()


CONTENDERS: list[Contender] = [
    Contender(
        ANYPOOL,
        "anypool",
        "anypool.backends.dask.backend",
        ("asyncio", "trio"),
        _open_anypool_on_dask,
        True,
        maps=False,
    ),
    # (Its cancellation leaves a running task to run on: no kill.)
    Contender(NATIVE, "distributed", "distributed", ("asyncio",), _open_native, False, maps=False),
]


# --- the scenarios -----------------------------------------------------------------------------


# Cancel the call on every worker, then the next call: every worker is busy, so that the no-op
# has to run on a worker whose call was cancelled (with a worker idle, Dask's own API would send
# it there and never show what its cancellation leaves behind). Under Dask's own API the
# cancelled calls run on, and the no-op waits until one ends by itself: its figure is about
# LONG_CALL_SECONDS, whatever Dask does. anypool kills the calls' child processes, and the
# no-op's Dask worker starts a new one for it (an interpreter, and anypool's worker-side imports).
cancel_then_next = engine_cancel_then_next(
    lambda sizes: sizes.dask_cancels, LONG_CALL_SECONDS, every_worker=True
)


def _on_dask(contender: Contender) -> bool:
    return contender in CONTENDERS


SCENARIOS: list[Scenario] = [
    Scenario(
        "dask_round_trip",
        "Per-task round trip of a no-op",
        (
            Metric("median", "median per call", "ms", "lower", goal=1.2),
            Metric("p99", "p99 per call", "ms", "lower"),
        ),
        engine_round_trip,
        _on_dask,
    ),
    Scenario(
        "dask_cancel",
        "Cancel the call on every worker, then the next call",
        # No goal: Dask's own figure is the cancelled calls' length, not Dask's overhead.
        (Metric("mean", "until the next call's result", "ms", "lower"),),
        cancel_then_next,
        _on_dask,
    ),
    Scenario(
        "dask_stream",
        "Items a generator in a task yields",
        # anypool's alone: Dask has no generator tasks.
        (Metric("rate", "items per second", "items/s", "higher"),),
        engine_stream_throughput(lambda sizes: sizes.dask_stream_items),
        lambda contender: contender.name == ANYPOOL,
    ),
]
NAMES = tuple(contender.name for contender in CONTENDERS)
KEYS = tuple(scenario.key for scenario in SCENARIOS)
GROUP = "dask"
"""What ``--only`` takes for every scenario of this section."""

SECTION = EngineSection(
    GROUP, "Dask", "distributed", "dask", CONTENDERS[0], CONTENDERS[1], tuple(SCENARIOS)
)


def installed() -> bool:
    return SECTION.installed()


def by_name(name: str) -> Contender:
    for contender in CONTENDERS:
        if contender.name == name:
            return contender
    raise KeyError(name)
