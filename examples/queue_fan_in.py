"""Several calls report to the parent through one anypool.Queue while they run.

Each call searches a range for primes and puts every hundredth one it finds in the queue (a
worker's put waits while the queue is full, so a slow parent holds the workers back). The parent
prints the reports as they arrive and closes the queue once every call has returned, which ends
its loop over the queue.
"""

import anyio

import anypool


def find_primes(start: int, stop: int, reports: anypool.WorkerQueue[tuple[int, int]]) -> int:
    """Runs in a worker: count the primes in [start, stop), reporting some as it goes."""
    found = 0
    for n in range(max(start, 2), stop):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found += 1
            if found % 100 == 0:
                reports.put((start, n))  # blocks while the queue is full
    return found


async def main() -> None:
    reports: anypool.Queue[tuple[int, int]] = anypool.Queue(maxsize=10)
    ranges = [(0, 50_000), (50_000, 100_000), (100_000, 150_000)]
    totals: dict[int, int] = {}
    async with anypool.Pool() as pool:

        async def search(start: int, stop: int) -> None:
            totals[start] = await pool.run(find_primes, start, stop, reports)

        async def search_all() -> None:
            async with anyio.create_task_group() as group:
                for start, stop in ranges:
                    group.start_soon(search, start, stop)
            reports.close()  # every call returned: no more reports

        async with anyio.create_task_group() as group:
            group.start_soon(search_all)
            received = 0
            async for start, prime in reports:
                received += 1
                if received % 10 == 0:
                    print(f"the search from {start:,} found {prime:,}")
    print(f"reports received: {received}")
    print(f"primes below 150,000: {sum(totals.values())}")


if __name__ == "__main__":
    anyio.run(main)
