"""The Ray section: anypool on Ray against Ray's own API, the same work through each.

Two contenders, each measured like the others (``benchmarks.runner``, in a fresh interpreter):
``anypool on Ray`` (``anypool.Pool(workers, backend=RayBackend())``) and ``Ray's own API`` (a
``@ray.remote(max_retries=0)`` function, its ref awaited from asyncio). Each run of either starts
a local Ray of its own and shuts it down, so that neither measures with the other's warm workers,
and warms it up before timing (Ray starts its workers lazily: the first tasks take seconds).
Ray's refs can be awaited on asyncio only: Ray's own API runs there, anypool on asyncio and trio.

Not part of ``--quick`` unless named (``--only ray``): a Ray takes seconds to start and a
gigabyte of memory, which the default test suite does not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

import anypool
from benchmarks import tasks
from benchmarks.contenders import AnypoolOnEngineSession, Contender, Session
from benchmarks.scenarios import (
    EngineSection,
    Metric,
    Scenario,
    engine_cancel_then_next,
    engine_round_trip,
    engine_stream_throughput,
)

ANYPOOL = "anypool on Ray"
NATIVE = "Ray's own API"

SHUTDOWN_SECONDS = 10.0
"""How long Ray's processes have to end after ``ray.shutdown()`` before they count as left."""
LONG_CALL_SECONDS = 60.0
"""How long the call that the cancel scenario cancels would sleep: only a kill ends it sooner."""


def installed() -> bool:
    return importlib.util.find_spec("ray") is not None


@asynccontextmanager
async def local_ray(workers: int) -> AsyncIterator[None]:
    """A local Ray of ``workers`` CPUs for this process, started now (never one that runs
    already: ``address="local"``), and shut down after, none of its processes left behind."""
    import psutil  # type: ignore[import-untyped, unused-ignore]
    import ray

    ray.init(
        address="local",
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        rays = psutil.Process().children(recursive=True)
        ray.shutdown()
        _, alive = psutil.wait_procs(rays, timeout=SHUTDOWN_SECONDS)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if alive:
            raise RuntimeError(f"ray.shutdown() left {len(alive)} of Ray's processes running")


# --- the contenders ----------------------------------------------------------------------------


@asynccontextmanager
async def _open_anypool_on_ray(workers: int) -> AsyncIterator[Session]:
    from anypool.backends import RayBackend

    async with local_ray(workers), anypool.Pool(workers, backend=RayBackend()) as pool:
        yield AnypoolOnEngineSession(pool, batches=False)


class _NativeSession(Session):
    """Ray's own API as its documentation shows it: a remote function per function (exported
    once, on first use), ``await ref`` on asyncio; a cancelled call is killed as anypool's are,
    ``ray.cancel(ref, force=True)``, and waited for until Ray confirms it."""

    def __init__(self) -> None:
        import ray

        self._ray: Any = ray
        self._remotes: dict[Callable[..., Any], Any] = {}

    def _remote(self, fn: Callable[..., Any], **options: Any) -> Any:
        remote = self._remotes.get(fn)
        if remote is None:
            remote = self._remotes[fn] = self._ray.remote(max_retries=0, **options)(fn)
        return remote

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        ref = self._remote(fn).remote(*args)
        try:
            return await ref
        except asyncio.CancelledError:
            self._ray.cancel(ref, force=True)
            exceptions = self._ray.exceptions
            with (
                anyio.CancelScope(shield=True),
                contextlib.suppress(exceptions.TaskCancelledError, exceptions.WorkerCrashedError),
            ):
                await ref
            raise

    async def stream_count(self, items: int) -> None:
        generator = self._remote(tasks.count_to, num_returns="streaming").remote(items)
        last = -1
        async for ref in generator:
            last = await ref
        if last != items - 1:
            raise RuntimeError("the stream's items went astray")


@asynccontextmanager
async def _open_native(workers: int) -> AsyncIterator[Session]:
    async with local_ray(workers):
        yield _NativeSession()


CONTENDERS: list[Contender] = [
    Contender(
        ANYPOOL,
        "anypool",
        "anypool.backends",
        ("asyncio", "trio"),
        _open_anypool_on_ray,
        True,
        maps=False,
    ),
    # (Its module: ray itself, without the lazily imported libraries its __all__ names.)
    Contender(NATIVE, "ray", "ray.exceptions", ("asyncio",), _open_native, True, maps=False),
]


# --- the scenarios -----------------------------------------------------------------------------


# Cancel a running call (its worker killed, Ray's confirmation awaited), then the next call.
# The warm-up between cycles has all workers up, so that the next call never waits for Ray to
# start a successor to the killed worker (some 350 ms here). It may still land on that
# successor, fresh, which loads the called function (and, under anypool, anypool's worker-side
# code) first: a cycle in two, here. The mean counts both kinds of cycle as they come; a median
# would fall on either.
cancel_then_next = engine_cancel_then_next(
    lambda sizes: sizes.ray_cancels, LONG_CALL_SECONDS, every_worker=False
)


def _on_ray(contender: Contender) -> bool:
    return contender in CONTENDERS


SCENARIOS: list[Scenario] = [
    Scenario(
        "ray_round_trip",
        "Per-task round trip of a no-op",
        (
            Metric("median", "median per call", "ms", "lower", goal=1.2),
            Metric("p99", "p99 per call", "ms", "lower"),
        ),
        engine_round_trip,
        _on_ray,
    ),
    Scenario(
        "ray_cancel",
        "Cancel a running call, then the next call",
        (Metric("mean", "until the next call's result", "ms", "lower", goal=1.2),),
        cancel_then_next,
        _on_ray,
    ),
    Scenario(
        "ray_stream",
        "Items a generator in a task yields",
        (Metric("rate", "items per second", "items/s", "higher", goal=1.0),),
        engine_stream_throughput(lambda sizes: sizes.ray_stream_items),
        _on_ray,
    ),
]
NAMES = tuple(contender.name for contender in CONTENDERS)
KEYS = tuple(scenario.key for scenario in SCENARIOS)
GROUP = "ray"
"""What ``--only`` takes for every scenario of this section."""

SECTION = EngineSection(GROUP, "Ray", "ray", "ray", CONTENDERS[0], CONTENDERS[1], tuple(SCENARIOS))


def by_name(name: str) -> Contender:
    for contender in CONTENDERS:
        if contender.name == name:
            return contender
    raise KeyError(name)
