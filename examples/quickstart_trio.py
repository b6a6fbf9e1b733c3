import trio

import anypool


def count_primes(limit: int) -> int:
    """CPU-bound pure Python: count the primes below `limit`."""
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


async def main() -> None:
    async with anypool.Pool() as pool:
        print("primes below 100_000:", await pool.run(count_primes, 100_000))  # 9592
        with trio.move_on_after(0.5):  # too slow: the worker running it is killed
            await pool.run(count_primes, 10**9)
        print("gave up after 0.5 s; the pool is still usable:", await pool.run(sum, [1, 2, 3]))


if __name__ == "__main__":
    trio.run(main)
