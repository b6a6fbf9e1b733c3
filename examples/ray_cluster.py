"""The same pool code on a Ray cluster: one argument changes.

Run it as it is and it starts a local Ray of two CPUs (and stops it at the end); on a cluster
(`ray start --head` on one machine, `ray start --address=HEAD:6379` on the others), pass
`RayBackend(address="auto")`. Needs `pip install 'anypool[ray]'`.
"""

from __future__ import annotations

import math

import anyio

import anypool
from anypool.backends import RayBackend


def count_primes(limit: int) -> int:
    """CPU-bound work: the primes below ``limit``, by trial division."""
    return sum(all(n % d for d in range(2, math.isqrt(n) + 1)) for n in range(2, limit))


def slow_forever() -> None:
    import time

    time.sleep(3600)


async def main() -> None:
    backend = RayBackend(init_options={"num_cpus": 2, "include_dashboard": False})
    async with anypool.Pool(max_workers=2, backend=backend) as pool:
        print("primes below 50 000:", await pool.run(count_primes, 50_000))
        limits = [10_000, 20_000, 30_000, 40_000]
        counts = [count async for count in pool.map(count_primes, limits)]
        print("primes below", limits, ":", counts)
        # A deadline cancels the call, and Ray kills the process that ran it.
        with anyio.move_on_after(1.0) as scope:
            await pool.run(slow_forever)
        print("cancelled the slow call:", scope.cancelled_caught)
        print("and the pool goes on:", await pool.run(count_primes, 100))


if __name__ == "__main__":
    anyio.run(main)
