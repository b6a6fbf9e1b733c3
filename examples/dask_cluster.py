"""The same pool code on a Dask cluster: one argument changes, and a cancelled call stops, which
Dask's own `Future.cancel()` cannot do to a task that runs.

Run it as it is and the pool starts a local Dask cluster of two worker processes (and closes
it at the end); on a cluster, pass its scheduler's address, `DaskBackend("tcp://HOST:8786")`,
or a `distributed.Client`. Needs `pip install 'anypool[dask]'`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import anyio

import anypool
from anypool.backends import DaskBackend


def count_primes(limit: int) -> int:
    """CPU-bound work: the primes below ``limit``, by trial division."""
    return sum(all(n % d for d in range(2, math.isqrt(n) + 1)) for n in range(2, limit))


def primes_by_thousand(thousands: int) -> Iterator[int]:
    """The primes below each thousand, one at a time, as they are counted."""
    for upper in range(1, thousands + 1):
        yield count_primes(upper * 1000)


def slow_forever() -> None:
    time.sleep(3600)


async def main() -> None:
    async with anypool.Pool(max_workers=2, backend=DaskBackend()) as pool:
        print("primes below 50 000:", await pool.run(count_primes, 50_000))
        limits = [10_000, 20_000, 30_000, 40_000]
        counts = [count async for count in pool.map(count_primes, limits)]
        print("primes below", limits, ":", counts)
        async with pool.stream(primes_by_thousand, 5) as counted:
            print("primes below each thousand:", [count async for count in counted])
        # A deadline cancels the call, and the process that ran it is killed: the Dask worker
        # is free at once for the next call.
        with anyio.move_on_after(1.0) as scope:
            await pool.run(slow_forever)
        print("cancelled the slow call:", scope.cancelled_caught)
        print("and the pool goes on:", await pool.run(count_primes, 100))


if __name__ == "__main__":
    anyio.run(main)
