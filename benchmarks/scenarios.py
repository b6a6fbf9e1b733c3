"""What is measured: each scenario is an async function of a contender's session.

A scenario returns its metrics as a dict of numbers; the runner repeats it and keeps medians.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import anyio

from benchmarks import tasks
from benchmarks.contenders import Contender, Session


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each scenario does: ``FULL`` for the report, ``QUICK`` to check it runs."""

    repeat: int
    round_trips: int
    concurrent_calls: int
    map_items: int
    map_runs: int
    """Maps per measurement, of which the median counts: one map of a fast contender lasts
    some 50 ms, which one hiccup of the machine can double. Slow ones run once (see
    ``MAP_SECONDS``)."""
    cpu_tasks: int
    cpu_seconds: float
    big_bytes: int
    stream_items: int
    busy_seconds: float
    cold_repeat: int
    hold_seconds: float
    """How long each warm-up call holds its worker, so that the calls reach every worker."""
    ray_stream_items: int
    """Items streamed in the Ray section: Ray's own streaming generator, an object per item,
    takes about a second for 5 000 of them."""
    ray_cancels: int
    """Cancel-then-next-call cycles per measurement in the Ray section (the median counts)."""
    dask_cancels: int
    """Cancel-then-next-call cycles per measurement in the Dask section: each lasts as long as
    the cancelled calls under Dask's own API, which waits for them to end."""
    dask_stream_items: int
    """Items streamed in the Dask section."""


FULL = Sizes(
    repeat=5,
    round_trips=2000,
    concurrent_calls=3000,
    map_items=200_000,
    map_runs=5,
    cpu_tasks=40,
    cpu_seconds=0.05,
    big_bytes=32 << 20,
    stream_items=200_000,
    busy_seconds=2.0,
    cold_repeat=5,
    hold_seconds=0.2,
    ray_stream_items=20_000,
    ray_cancels=20,
    dask_cancels=5,
    dask_stream_items=20_000,
)
QUICK = Sizes(
    repeat=1,
    round_trips=100,
    concurrent_calls=300,
    map_items=5_000,
    map_runs=2,
    cpu_tasks=8,
    cpu_seconds=0.02,
    big_bytes=1 << 20,
    stream_items=5_000,
    busy_seconds=0.5,
    cold_repeat=1,
    hold_seconds=0.05,
    ray_stream_items=1_000,
    ray_cancels=3,
    dask_cancels=2,
    dask_stream_items=1_000,
)


def sizes(size: str, repeat: int | None = None) -> Sizes:
    """The sizes of ``"quick"`` or ``"full"``, with ``repeat`` runs if given."""
    chosen = QUICK if size == "quick" else FULL
    return chosen if repeat is None else dataclasses.replace(chosen, repeat=repeat)


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: Literal["lower", "higher"]
    goal: float | None = None
    """The ratio to the best peer that anypool aims for (at most, when lower is better)."""
    variant_goals: tuple[tuple[str, float], ...] = ()
    """Goals of anypool's other rows (``("batches", 1.5)``), where they differ from ``goal``."""
    against: tuple[str, ...] | None = None
    """The peers the goal compares with; ``None``: the best of all."""
    absolute: bool = False
    """The goal is for anypool's value itself, not its ratio to a peer."""


Measure = Callable[[Session, int, Sizes], Awaitable[dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    metrics: tuple[Metric, ...]
    measure: Measure | None
    """``None``: measured by the runner itself (in fresh processes)."""
    applies: Callable[[Contender], bool]
    runs_on_trio: bool = True


@dataclasses.dataclass(frozen=True)
class EngineSection:
    """A section of the benchmark that compares anypool on an engine (Ray, Dask) with that
    engine's own API, each run on a local instance of the engine that it starts itself
    (``benchmarks/on_ray.py``, ``benchmarks/on_dask.py``; ``benchmarks/engines.py`` lists
    them). Not part of ``--quick`` unless ``--only`` names it or one of its scenarios."""

    group: str
    """What ``--only`` takes for every scenario of the section (``"ray"``)."""
    engine: str
    """The engine's name in the report (``"Ray"``)."""
    module: str
    """What the engine's own API imports; the section runs where it is installed."""
    extra: str
    """anypool's extra that installs the engine (``pip install anypool[extra]``)."""
    anypool: Contender
    native: Contender
    """The engine's own API, which ``anypool``'s figures are compared with."""
    scenarios: tuple[Scenario, ...]

    @property
    def contenders(self) -> tuple[Contender, Contender]:
        return self.anypool, self.native

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(scenario.key for scenario in self.scenarios)

    @property
    def heading(self) -> str:
        """The heading of the section's part of the report."""
        return f"## {self.engine} backend: {self.anypool.name} against {self.native.name}"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


async def warm_up(session: Session, workers: int, sizes: Sizes) -> list[int]:
    return await session.warm_up(workers, sizes.hold_seconds)


async def round_trip(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    await warm_up(session, workers, sizes)
    return await sequential_no_ops(session, sizes.round_trips, unit=1e6)


async def sequential_no_ops(session: Session, count: int, *, unit: float) -> dict[str, float]:
    """The median and p99 of ``count`` sequential calls of a no-op, in seconds times ``unit``."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await session.run(tasks.noop)
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {
        "median": statistics.median(samples) * unit,
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * unit,
    }


async def engine_round_trip(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    """An engine section's sequential calls of a no-op: milliseconds per call."""
    await session.warm_up(workers, sizes.hold_seconds)
    return await sequential_no_ops(session, sizes.round_trips, unit=1e3)


def engine_stream_throughput(items: Callable[[Sizes], int]) -> Measure:
    """An engine section's scenario: the ``items(sizes)`` items a generator in a task yields,
    read one by one: items per second."""

    async def measure(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
        count = items(sizes)
        await session.warm_up(1, sizes.hold_seconds)
        await session.stream_count(100)  # the generator's function reaches a worker
        started = time.perf_counter()
        await session.stream_count(count)
        return {"rate": count / (time.perf_counter() - started)}

    return measure


def engine_cancel_then_next(
    cycles: Callable[[Sizes], int], seconds: float, *, every_worker: bool
) -> Measure:
    """An engine section's scenario: a call sleeping ``seconds`` (on every worker where
    ``every_worker``, so that the next call cannot go to an idle one), cancelled once it runs,
    then a no-op: milliseconds from the cancellation to the no-op's result, the mean of
    ``cycles(sizes)`` cycles after one more that warms up. Every cycle starts with all workers
    up and free (a warm-up between cycles)."""

    async def measure(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
        samples = []
        with tempfile.TemporaryDirectory(prefix="anypool-bench-") as directory:
            for cycle in range(cycles(sizes) + 1):
                await session.warm_up(workers, sizes.hold_seconds)
                markers = [
                    Path(directory, f"running-{cycle}-{n}")
                    for n in range(workers if every_worker else 1)
                ]
                async with anyio.create_task_group() as group:
                    for marker in markers:
                        group.start_soon(session.run, tasks.mark_then_sleep, str(marker), seconds)
                    # (Stats, microseconds: not worth a thread.)
                    while not all(marker.exists() for marker in markers):
                        await anyio.sleep(0.001)
                    started = time.perf_counter()
                    group.cancel_scope.cancel()
                await session.run(tasks.noop)
                samples.append(time.perf_counter() - started)
        return {"mean": statistics.mean(samples[1:]) * 1e3}

    return measure


async def concurrent_calls(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    await warm_up(session, workers, sizes)
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(sizes.concurrent_calls):
            group.start_soon(session.run, tasks.noop)
    return {"rate": sizes.concurrent_calls / (time.perf_counter() - started)}


MAP_SECONDS = 1.0
"""Once the maps of one measurement took this long, no further one starts."""


async def map_throughput(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    await warm_up(session, workers, sizes)
    items = list(range(sizes.map_items))
    rates: list[float] = []
    began = time.perf_counter()
    while len(rates) < sizes.map_runs and time.perf_counter() - began < MAP_SECONDS:
        started = time.perf_counter()
        results = await session.map(tasks.noop, items)
        seconds = time.perf_counter() - started
        if results != items:
            raise RuntimeError("map returned wrong results")
        rates.append(len(items) / seconds)
        del results
    return {"rate": statistics.median(rates)}


async def cpu_efficiency(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    """The tasks' own time in the workers, spread evenly over them, against the wall time: what
    is lost to dispatch, transfer and idle workers (1.0: nothing)."""
    iterations = tasks.calibrate_spin(sizes.cpu_seconds)
    await warm_up(session, workers, sizes)
    spent: list[float] = []

    async def one() -> None:
        spent.append(await session.run(tasks.spin, iterations))

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(sizes.cpu_tasks):
            group.start_soon(one)
    wall = time.perf_counter() - started
    return {"efficiency": sum(spent) / workers / wall}


async def _echo_seconds(session: Session, value: Any, check: Callable[[Any], bool]) -> float:
    await session.run(tasks.echo, value)  # the first one may start or grow buffers
    best = []
    for _ in range(3):
        started = time.perf_counter()
        result = await session.run(tasks.echo, value)
        best.append(time.perf_counter() - started)
        if not check(result):
            raise RuntimeError("echo returned something else")
    return statistics.median(best)


async def bytes_round_trip(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    await warm_up(session, 1, sizes)
    payload = os.urandom(1024) * (sizes.big_bytes // 1024)
    seconds = await _echo_seconds(session, payload, lambda result: result == payload)
    return {"seconds": seconds * 1e3}


async def array_round_trip(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    import numpy

    await warm_up(session, 1, sizes)
    array = numpy.random.default_rng(0).random(sizes.big_bytes // 8)
    seconds = await _echo_seconds(
        session, array, lambda result: bool(numpy.array_equal(result, array))
    )
    return {"seconds": seconds * 1e3}


async def stream_throughput(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    await warm_up(session, 1, sizes)
    started = time.perf_counter()
    await session.stream_count(sizes.stream_items)
    return {"rate": sizes.stream_items / (time.perf_counter() - started)}


async def cancel_then_next(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    """Every worker busy; cancel all their calls; how long until the next call is served."""
    await warm_up(session, workers, sizes)
    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(session.run, tasks.busy, sizes.busy_seconds)
        await anyio.sleep(0.3)
        started = time.perf_counter()
        group.cancel_scope.cancel()
    await session.run(tasks.noop)
    return {"seconds": (time.perf_counter() - started) * 1e3}


async def memory(session: Session, workers: int, sizes: Sizes) -> dict[str, float]:
    import psutil  # type: ignore[import-untyped, unused-ignore]

    parent = psutil.Process()
    before = parent.memory_info().rss
    pids = await warm_up(session, workers, sizes)
    for _ in range(200):
        await session.run(tasks.noop)
    worker_rss = [psutil.Process(pid).memory_info().rss for pid in set(pids)]
    return {
        "parent": (parent.memory_info().rss - before) / 2**20,
        "worker": statistics.mean(worker_rss) / 2**20,
    }


def _calls(contender: Contender) -> bool:
    return contender.runs_calls and not contender.variant


SCENARIOS: list[Scenario] = [
    Scenario(
        "round_trip",
        "Warm round trip of a no-op",
        (
            Metric("median", "median", "µs", "lower", goal=0.6),
            Metric("p99", "p99", "µs", "lower"),
        ),
        round_trip,
        _calls,
    ),
    Scenario(
        "concurrent",
        "Concurrent no-op calls",
        (Metric("rate", "calls per second", "calls/s", "higher", goal=1.5),),
        concurrent_calls,
        _calls,
    ),
    Scenario(
        "map",
        "map of a no-op",
        # The plain `async for` pays a loop step per result, as the peers' per-item iteration
        # does; results.batches() does not.
        (
            Metric(
                "rate",
                "items per second",
                "items/s",
                "higher",
                goal=1.0,
                variant_goals=(("batches", 1.5),),
            ),
        ),
        map_throughput,
        lambda contender: contender.maps,
    ),
    Scenario(
        "cpu",
        "CPU-bound tasks on every core",
        (Metric("efficiency", "efficiency (work / wall)", "", "higher", goal=0.97, absolute=True),),
        cpu_efficiency,
        _calls,
    ),
    Scenario(
        "bytes",
        "Round trip of a large bytes object",
        (Metric("seconds", "round trip", "ms", "lower", goal=1 / 1.5),),
        bytes_round_trip,
        _calls,
    ),
    Scenario(
        "array",
        "Round trip of a large float64 numpy array",
        (Metric("seconds", "round trip", "ms", "lower", goal=1 / 5),),
        array_round_trip,
        _calls,
    ),
    Scenario(
        "stream",
        "Items a generator in a worker yields",
        (Metric("rate", "items per second", "items/s", "higher"),),
        stream_throughput,
        lambda contender: contender.name == "anypool",
    ),
    Scenario(
        "cancel",
        "Cancel every busy worker, then the next call",
        (
            Metric(
                "seconds",
                "until the next call is served",
                "ms",
                "lower",
                goal=0.3,
                against=("anyio.to_process", "trio-parallel"),
            ),
        ),
        cancel_then_next,
        _calls,
    ),
    Scenario(
        "cold",
        "Cold first call on a fresh pool (a fresh interpreter)",
        (
            Metric(
                "seconds", "first result", "ms", "lower", goal=0.3, against=("anyio.to_process",)
            ),
        ),
        None,
        # Under fork, a first worker needs no interpreter of its own to boot.
        lambda contender: _calls(contender) or contender.variant == "fork",
    ),
    Scenario(
        "memory",
        "Memory after warm-up",
        (
            Metric("parent", "parent RSS growth", "MiB", "lower"),
            Metric("worker", "RSS per worker", "MiB", "lower"),
        ),
        memory,
        _calls,
    ),
]


def by_key(key: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.key == key:
            return scenario
    raise KeyError(key)
