"""anypool demo: the same program under asyncio, then under trio.

It shows (a) CPU work running in parallel on worker processes, (b) an exception raised in a
worker arriving with the worker's traceback, and (c) a timeout that kills the busy worker, after
which the pool carries on with a new one.
"""

import os
import sys
import time
import traceback

import anyio

import anypool


def count_primes(limit: int) -> int:
    """CPU-bound pure Python: count the primes below `limit`."""
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


def parse_setting(line: str) -> tuple[str, int]:
    """Parse "name = number"; raises ValueError on anything else."""
    name, value = line.split("=")
    return name.strip(), int(value)


def spin(seconds: float) -> None:
    """Keep one CPU busy for `seconds`, never checking for cancellation."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to someone else (the pid was reused)
        return True
    return True


def heading(text: str) -> None:
    print(f"\n--- {text}")


async def show_results(pool: anypool.Pool) -> None:
    heading("(a) results: two CPU-bound calls in parallel")
    limits = (50_000, 100_000)
    counts: dict[int, int] = {}

    async def count(limit: int) -> None:
        counts[limit] = await pool.run(count_primes, limit)

    started = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        for limit in limits:
            tasks.start_soon(count, limit)
    elapsed = time.perf_counter() - started
    for limit in limits:
        print(f"primes below {limit:_}: {counts[limit]}")
    print(f"took {elapsed:.2f} s; the event loop stayed free meanwhile")


async def show_remote_traceback(pool: anypool.Pool) -> None:
    heading("(b) an exception raised in a worker, with the worker's traceback")
    try:
        await pool.run(parse_setting, "verbose: yes")
    except ValueError as exc:
        print(f"caught {type(exc).__name__}: {exc}")
        cause = type(exc.__cause__)
        print(f"its __cause__ is {cause.__module__}.{cause.__qualname__}; the full traceback:\n")
        traceback.print_exception(exc, file=sys.stdout)


async def show_timeout_kills_worker() -> None:
    heading("(c) a timeout kills the busy worker; the pool carries on")
    async with anypool.Pool(max_workers=1) as pool:
        pid = await pool.run(os.getpid)
        print(f"the pool's only worker is pid {pid}; it now spins for 60 s ...")
        started = time.perf_counter()
        with anyio.move_on_after(0.5) as scope:
            await pool.run(spin, 60)
        elapsed = time.perf_counter() - started
        if not scope.cancelled_caught:
            sys.exit("error: the call was expected to time out")
        print(f"... timed out after {elapsed:.2f} s")
        if process_exists(pid):
            sys.exit(f"error: worker {pid} still exists after its call was cancelled")
        print(f"worker {pid} was killed")
        new_pid = await pool.run(os.getpid)
        print(f"the next call ran on a new worker, pid {new_pid}")
        if new_pid == pid:
            sys.exit("error: the next call ran on the killed worker's pid")


async def main() -> None:
    async with anypool.Pool(max_workers=2) as pool:
        await show_results(pool)
        await show_remote_traceback(pool)
    await show_timeout_kills_worker()


if __name__ == "__main__":
    for backend in ("asyncio", "trio"):
        print(f"\n===== {backend} =====")
        anyio.run(main, backend=backend)
