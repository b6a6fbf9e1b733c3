import asyncio

import anypool


def count_primes(limit: int) -> int:
    """CPU-bound pure Python: count the primes below `limit`."""
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


async def main() -> None:
    async with anypool.Pool() as pool:
        counts = await asyncio.gather(*(pool.run(count_primes, n) for n in (50_000, 100_000)))
        print("primes below 50_000 and 100_000:", counts)  # [5133, 9592], computed in parallel


if __name__ == "__main__":
    asyncio.run(main())
