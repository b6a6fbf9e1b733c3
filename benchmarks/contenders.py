"""anypool and its peers behind one small interface, each through its own documented API.

A contender opens a *session* with a given number of worker processes; a session runs one call
(``await session.run(fn, *args)``) and, where the contender has one, maps a function over a list
(``await session.map(fn, items)``). Peers that have a way to kill a call's worker on cancellation
get it switched on. Peers are imported only when used: they are benchmark-only dependencies
(``pip install anypool[bench]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import multiprocessing
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread

import anypool
from benchmarks import tasks

# aiomultiprocess runs coroutine functions only: each task's async twin.
_ASYNC_TWINS: dict[Callable[..., Any], Callable[..., Any]] = {
    tasks.noop: tasks.async_noop,
    tasks.echo: tasks.async_echo,
    tasks.spin: tasks.async_spin,
    tasks.busy: tasks.async_busy,
    tasks.getpid_after: tasks.async_getpid_after,
}


class Session:
    """What a scenario uses: ``run``, and ``map`` and ``stream`` where the contender has them."""

    async def warm_up(self, workers: int, hold_seconds: float) -> list[int]:
        """Start every worker (concurrent calls that each hold one); their pids."""
        pids: list[int] = []

        async def one() -> None:
            pids.append(await self.run(tasks.getpid_after, hold_seconds))

        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(one)
        for _ in range(20):
            await self.run(tasks.noop)
        return pids

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        raise NotImplementedError

    async def stream_count(self, items: int) -> None:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    package: str
    """The distribution whose version the report gives."""
    module: str
    """What to import to use it (imported ahead of any timing)."""
    backends: tuple[str, ...]
    open: Callable[[int], contextlib.AbstractAsyncContextManager[Session]]
    kills_on_cancel: bool
    maps: bool = True
    runs_calls: bool = True
    variant: str = ""
    """How an anypool row other than the default one is used (``"batches"``, ``"fork"``)."""

    @property
    def is_anypool(self) -> bool:
        return self.package == "anypool"

    def version(self) -> str:
        if self.package == "python":
            return python_version()
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module.partition(".")[0]) is not None


def import_peer(contender: Contender) -> None:
    """Import what using ``contender`` takes, as a program's ``from module import name`` would
    have done before it runs: a module's public names too, where it imports them lazily."""
    module = importlib.import_module(contender.module)
    for name in getattr(module, "__all__", ()):
        getattr(module, name)


async def wait_future(future: concurrent.futures.Future[Any]) -> Any:
    """Await a ``concurrent.futures.Future`` on either event loop; cancelling the wait cancels
    the future (which kills its worker where the peer supports that)."""
    if asyncio._get_running_loop() is not None:
        return await asyncio.wrap_future(future)
    import trio

    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    future.add_done_callback(lambda _: token.run_sync_soon(done.set))
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


# --- anypool -----------------------------------------------------------------------------------


class _AnypoolSession(Session):
    def __init__(self, pool: anypool.Pool, batches: bool) -> None:
        self._pool = pool
        self._batches = batches

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._pool.run(fn, *args)

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        async with self._pool.map(fn, items, chunksize="auto") as results:
            if not self._batches:
                return [result async for result in results]
            collected: list[Any] = []
            async for batch in results.batches():
                collected += batch
            return collected

    async def stream_count(self, items: int) -> None:
        async with self._pool.stream(tasks.count_up) as numbers:
            async for number in numbers:
                if number == items - 1:
                    return


class AnypoolOnEngineSession(_AnypoolSession):
    """anypool on an engine (Ray, Dask), whose own API the engine sections compare it with."""

    async def stream_count(self, items: int) -> None:
        # A generator that ends by itself: the engines' own APIs have no way to leave one early
        # but a cancellation, so neither side's figure includes stopping it.
        last = -1
        async with self._pool.stream(tasks.count_to, items) as numbers:
            async for number in numbers:
                last = number
        if last != items - 1:
            raise RuntimeError("the stream's items went astray")


def _anypool(
    batches: bool = False, start_method: str | None = None
) -> Callable[[int], contextlib.AbstractAsyncContextManager[Session]]:
    @asynccontextmanager
    async def open_session(workers: int) -> AsyncIterator[Session]:
        async with anypool.Pool(workers, start_method=start_method) as pool:
            yield _AnypoolSession(pool, batches)

    return open_session


# --- peers -------------------------------------------------------------------------------------


class _AnyioToProcessSession(Session):
    def __init__(self, workers: int) -> None:
        self._limiter = anyio.CapacityLimiter(workers)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        import anyio.to_process

        return await anyio.to_process.run_sync(fn, *args, cancellable=True, limiter=self._limiter)


@asynccontextmanager
async def _open_anyio_to_process(workers: int) -> AsyncIterator[Session]:
    # Its workers live as long as the event loop, which each measurement runs afresh.
    yield _AnyioToProcessSession(workers)


class _TrioParallelSession(Session):
    def __init__(self, context: Any, workers: int) -> None:
        import trio

        self._context = context
        self._limiter = trio.CapacityLimiter(workers)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._context.run_sync(fn, *args, kill_on_cancel=True, limiter=self._limiter)


@asynccontextmanager
async def _open_trio_parallel(workers: int) -> AsyncIterator[Session]:
    import trio_parallel  # type: ignore[import-untyped, unused-ignore]

    async with trio_parallel.open_worker_context() as context:
        yield _TrioParallelSession(context, workers)


class _ExecutorSession(Session):
    """A concurrent.futures executor: calls through ``submit``, maps through ``map`` in a
    thread (it blocks), with the chunk size the standard library's Pool.map picks."""

    def __init__(self, executor: Any, workers: int, run_in_executor: bool = False) -> None:
        self._executor = executor
        self._workers = workers
        self._run_in_executor = run_in_executor

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._run_in_executor:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        return await wait_future(self._executor.submit(fn, *args))

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        chunksize = peer_chunksize(len(items), self._workers)
        return await anyio.to_thread.run_sync(
            lambda: list(self._executor.map(fn, items, chunksize=chunksize))
        )


@asynccontextmanager
async def _open_process_pool_executor(workers: int) -> AsyncIterator[Session]:
    executor = concurrent.futures.ProcessPoolExecutor(workers)
    try:
        yield _ExecutorSession(executor, workers, run_in_executor=True)
    finally:
        await anyio.to_thread.run_sync(lambda: executor.shutdown(wait=True, cancel_futures=True))


@asynccontextmanager
async def _open_loky(workers: int) -> AsyncIterator[Session]:
    import loky  # type: ignore[import-untyped, unused-ignore]

    executor = loky.get_reusable_executor(max_workers=workers)
    try:
        yield _ExecutorSession(executor, workers)
    finally:
        await anyio.to_thread.run_sync(lambda: executor.shutdown(wait=True, kill_workers=True))


class _MultiprocessingPoolSession(Session):
    def __init__(self, pool: Any, workers: int) -> None:
        self._pool = pool
        self._workers = workers

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        # Its result-handler thread completes the future, unless the wait was cancelled.
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def complete(outcome: Any, *, failed: bool = False) -> None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if failed:
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

        self._pool.apply_async(
            fn, args, callback=complete, error_callback=lambda e: complete(e, failed=True)
        )
        return await wait_future(future)

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        chunksize = peer_chunksize(len(items), self._workers)
        return await anyio.to_thread.run_sync(
            lambda: list(self._pool.imap(fn, items, chunksize=chunksize))
        )


@asynccontextmanager
async def _open_multiprocessing_pool(workers: int) -> AsyncIterator[Session]:
    pool = multiprocessing.Pool(workers)
    try:
        yield _MultiprocessingPoolSession(pool, workers)
    finally:
        pool.terminate()
        await anyio.to_thread.run_sync(pool.join)


class _PebbleSession(Session):
    def __init__(self, pool: Any, workers: int) -> None:
        self._pool = pool
        self._workers = workers

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        # A cancelled ProcessFuture stops the worker running it.
        return await wait_future(self._pool.schedule(fn, args))

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        chunksize = peer_chunksize(len(items), self._workers)
        future = self._pool.map(fn, items, chunksize=chunksize)
        return await anyio.to_thread.run_sync(lambda: list(future.result()))


@asynccontextmanager
async def _open_pebble(workers: int) -> AsyncIterator[Session]:
    import pebble

    pool = pebble.ProcessPool(max_workers=workers)
    try:
        yield _PebbleSession(pool, workers)
    finally:
        pool.stop()  # type: ignore[no-untyped-call, unused-ignore]
        await anyio.to_thread.run_sync(pool.join)


class _AiomultiprocessSession(Session):
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._pool.apply(_ASYNC_TWINS[fn], args)

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(await self._pool.map(_ASYNC_TWINS[fn], items))


@asynccontextmanager
async def _open_aiomultiprocess(workers: int) -> AsyncIterator[Session]:
    import aiomultiprocess  # type: ignore[import-untyped, unused-ignore]

    pool = aiomultiprocess.Pool(workers)
    try:
        yield _AiomultiprocessSession(pool)
    finally:
        pool.terminate()
        await pool.join()


class _MpireSession(Session):
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def warm_up(self, workers: int, hold_seconds: float) -> list[int]:
        # It has no single calls: a small map starts its workers.
        await self.map(tasks.noop, list(range(100 * workers)))
        return []

    async def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return await anyio.to_thread.run_sync(lambda: list(self._pool.map(fn, items)))


@asynccontextmanager
async def _open_mpire(workers: int) -> AsyncIterator[Session]:
    import mpire

    pool = mpire.WorkerPool(n_jobs=workers, keep_alive=True)  # type: ignore[attr-defined, unused-ignore]
    try:
        yield _MpireSession(pool)
    finally:
        await anyio.to_thread.run_sync(pool.terminate)


def peer_chunksize(items: int, workers: int) -> int:
    """The chunk size multiprocessing's Pool.map picks: its peers' fastest documented default."""
    return max(1, items // (4 * workers))


BOTH = ("asyncio", "trio")

CONTENDERS: list[Contender] = [
    Contender("anypool", "anypool", "anypool", BOTH, _anypool(), True),
    # anypool used otherwise than by default, each in the scenarios where that is the point.
    Contender(
        "anypool (batches)",
        "anypool",
        "anypool",
        BOTH,
        _anypool(batches=True),
        True,
        variant="batches",
    ),
    Contender(
        "anypool (fork)",
        "anypool",
        "anypool",
        BOTH,
        _anypool(start_method="fork"),
        True,
        maps=False,
        variant="fork",
    ),
    Contender(
        "anyio.to_process",
        "anyio",
        "anyio.to_process",
        BOTH,
        _open_anyio_to_process,
        True,
        maps=False,
    ),
    Contender(
        "trio-parallel",
        "trio-parallel",
        "trio_parallel",
        ("trio",),
        _open_trio_parallel,
        True,
        maps=False,
    ),
    Contender(
        "ProcessPoolExecutor",
        "python",
        "concurrent.futures.process",
        ("asyncio",),
        _open_process_pool_executor,
        False,
    ),
    Contender(
        "multiprocessing.Pool",
        "python",
        "multiprocessing.pool",
        BOTH,
        _open_multiprocessing_pool,
        False,
    ),
    Contender("pebble", "pebble", "pebble", BOTH, _open_pebble, True),
    Contender("loky", "loky", "loky", BOTH, _open_loky, False),
    Contender(
        "aiomultiprocess",
        "aiomultiprocess",
        "aiomultiprocess",
        ("asyncio",),
        _open_aiomultiprocess,
        False,
    ),
    Contender("mpire", "mpire", "mpire", ("asyncio",), _open_mpire, False, runs_calls=False),
]


def by_name(name: str) -> Contender:
    for contender in CONTENDERS:
        if contender.name == name:
            return contender
    raise KeyError(name)


def python_version() -> str:
    return sys.version.split()[0]
