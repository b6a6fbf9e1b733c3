"""Items per second that pool.stream carries from a generator in a worker to the consumer.

    python benchmarks/stream_throughput.py [--items N] [--repeat N] [--quick]

No peer streams items out of a running worker function, so this reports anypool alone, on
asyncio and on trio, for small items (ints) with the default buffer (64).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import anyio

import anypool


def count_up():
    number = 0
    while True:
        yield number
        number += 1


async def stream_seconds(items: int) -> float:
    async with anypool.Pool(1) as pool:
        await pool.run(int)  # start the worker
        started = time.perf_counter()
        async with pool.stream(count_up) as numbers:
            async for number in numbers:
                if number == items - 1:
                    break
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few seconds, to check it runs")
    options = parser.parse_args()
    if options.quick:
        options.items, options.repeat = 2_000, 1
    print(
        f"pool.stream of {options.items:_} ints, median of {options.repeat} runs, "
        f"Python {sys.version.split()[0]}"
    )
    for backend in ("asyncio", "trio"):
        rates = [
            options.items / anyio.run(stream_seconds, options.items, backend=backend)
            for _ in range(options.repeat)
        ]
        print(f"anypool (stream, {backend}): {statistics.median(rates):12,.0f} items/s")


if __name__ == "__main__":
    main()
