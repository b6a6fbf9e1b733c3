"""Throughput of mapping a no-op over many items: anypool against its peers, in one run.

    python benchmarks/map_throughput.py [--items N] [--workers N] [--repeat N] [--quick]

anypool is measured twice: iterating result by result (``async for result in results``, where
one event-loop step per result costs some 0.3 microseconds in CPython), and list by list
(``async for batch in results.batches()``).

Every contender maps the same function over the same items with the same number of worker
processes; each run is timed from the first item sent to the last result received, after a
warm-up that starts the workers. The report gives items per second (the median of the runs)
and each contender's ratio to the fastest peer. Peers get the chunk size that the standard
library's own Pool.map picks (items / (4 * workers)), their fastest documented setting.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable

import anyio

import anypool

try:
    import aiomultiprocess
except ImportError:  # an optional peer: `pip install anypool[bench]`
    aiomultiprocess = None


def noop(x: int) -> int:
    return x


async def async_noop(x: int) -> int:
    # aiomultiprocess runs coroutine functions only.
    return x


# Each contender maps noop over range(items) and returns the seconds it took, workers warm.


async def anypool_map(items: int, workers: int) -> float:
    async with anypool.Pool(workers) as pool:
        async for _ in pool.map(noop, range(workers)):  # start every worker
            pass
        started = time.perf_counter()
        results = [r async for r in pool.map(noop, range(items), chunksize="auto")]
        return _checked(time.perf_counter() - started, results, items)


async def anypool_map_batches(items: int, workers: int) -> float:
    async with anypool.Pool(workers) as pool:
        async for _ in pool.map(noop, range(workers)):  # start every worker
            pass
        started = time.perf_counter()
        results: list[int] = []
        async with pool.map(noop, range(items), chunksize="auto") as mapped:
            async for batch in mapped.batches():
                results += batch
        return _checked(time.perf_counter() - started, results, items)


def multiprocessing_imap(items: int, workers: int) -> float:
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(noop, range(workers))
        started = time.perf_counter()
        results = list(pool.imap(noop, range(items), chunksize=_peer_chunksize(items, workers)))
        return _checked(time.perf_counter() - started, results, items)


def process_pool_executor_map(items: int, workers: int) -> float:
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as executor:
        list(executor.map(noop, range(workers)))
        started = time.perf_counter()
        chunksize = _peer_chunksize(items, workers)
        results = list(executor.map(noop, range(items), chunksize=chunksize))
        return _checked(time.perf_counter() - started, results, items)


async def aiomultiprocess_map(items: int, workers: int) -> float:
    async with aiomultiprocess.Pool(workers, childconcurrency=1) as pool:
        await pool.map(async_noop, range(workers))
        started = time.perf_counter()
        results = await pool.map(async_noop, range(items))
        return _checked(time.perf_counter() - started, results, items)


def _peer_chunksize(items: int, workers: int) -> int:
    return max(1, items // (4 * workers))


def _checked(seconds: float, results: list[int], items: int) -> float:
    if results != list(range(items)):
        raise RuntimeError("wrong results")
    return seconds


def _contenders() -> dict[str, Callable[[int, int], float]]:
    contenders: dict[str, Callable[[int, int], float]] = {
        "anypool (asyncio)": lambda n, w: anyio.run(anypool_map, n, w),
        "anypool (trio)": lambda n, w: anyio.run(anypool_map, n, w, backend="trio"),
        "anypool (asyncio, batches)": lambda n, w: anyio.run(anypool_map_batches, n, w),
        "anypool (trio, batches)": lambda n, w: anyio.run(
            anypool_map_batches, n, w, backend="trio"
        ),
        "multiprocessing.Pool.imap": multiprocessing_imap,
        "ProcessPoolExecutor.map": process_pool_executor_map,
    }
    if aiomultiprocess is not None:
        contenders["aiomultiprocess"] = lambda n, w: asyncio.run(aiomultiprocess_map(n, w))
    return contenders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=anypool.cpu_count())
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds in all, to check it runs"
    )
    options = parser.parse_args()
    if options.quick:
        options.items, options.repeat = 2_000, 1

    rates: dict[str, float] = {}
    for name, run in _contenders().items():
        samples = [
            options.items / run(options.items, options.workers) for _ in range(options.repeat)
        ]
        rates[name] = statistics.median(samples)

    best_peer = max(rate for name, rate in rates.items() if not name.startswith("anypool"))
    print(
        f"map of a no-op over {options.items:_} items, {options.workers} workers, "
        f"median of {options.repeat} runs, Python {sys.version.split()[0]}"
    )
    print(f"{'contender':32s} {'items/s':>12s} {'vs best peer':>13s}")
    for name, rate in rates.items():
        print(f"{name:32s} {rate:12,.0f} {rate / best_peer:12.2f}x")
    if aiomultiprocess is None:
        print("(aiomultiprocess is not installed: pip install anypool[bench])")


if __name__ == "__main__":
    main()
