"""One cold first call, in this fresh interpreter: prints its milliseconds.

    python -m benchmarks.cold CONTENDER BACKEND WORKERS

Run by the benchmark, once per sample. Under the forkserver start method this module is what
the forkserver preloads as the main module: it imports nothing at the top beyond the standard
library, as a small script would.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    name, backend, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import anyio

    from benchmarks import contenders, tasks

    contender = contenders.by_name(name)
    contenders.import_peer(contender)

    async def first_call() -> float:
        started = time.perf_counter()
        async with contender.open(workers) as session:
            await session.run(tasks.noop)
            return time.perf_counter() - started

    print(anyio.run(first_call, backend=backend) * 1e3)


if __name__ == "__main__":
    main()
