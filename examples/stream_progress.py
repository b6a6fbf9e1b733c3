"""A long computation in a worker reports its progress and partial results as it goes.

The worker runs a generator: each `yield` reaches the parent at once, so the parent can show
progress, act on partial results, or stop the computation early (here: once the estimate is
good enough), which closes the generator in the worker.
"""

import random
from collections.abc import Iterator

import anyio

import anypool


def estimate_pi(samples_per_round: int) -> Iterator[tuple[int, int, float]]:
    """Monte Carlo estimate of pi, refined round after round, forever."""
    rng = random.Random(2026)
    inside = total = 0
    rounds = 0
    while True:
        for _ in range(samples_per_round):
            x, y = rng.random(), rng.random()
            inside += x * x + y * y <= 1.0
        total += samples_per_round
        rounds += 1
        yield rounds, total, 4 * inside / total


async def main() -> None:
    async with anypool.Pool(max_workers=1) as pool:
        async with pool.stream(estimate_pi, 20_000) as updates:
            async for rounds, samples, estimate in updates:
                print(f"round {rounds:2d}: {samples:7,d} samples, pi ~ {estimate:.5f}")
                if rounds == 10:
                    break  # good enough: leaving the block stops the generator in the worker
        print("the pool is free again:", await pool.run(sum, [1, 2, 3]) == 6)


if __name__ == "__main__":
    anyio.run(main)
