"""Map a CPU-bound function over a lazy async source, taking results as they finish.

The source is an async generator that, in real life, produces work items slowly and without
end (here: a few thousand). pool.map takes items from it only as fast as results are consumed,
so memory stays bounded however long the source runs. The progress bar needs tqdm:
``pip install anypool[progress]``.
"""

import hashlib
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel

import anypool


def digest(index: int) -> tuple[int, str]:
    """CPU work: hash a block of data many times over."""
    data = index.to_bytes(8, "little") * 512
    for _ in range(200):
        data = hashlib.sha256(data).digest() * 128
    return index, hashlib.sha256(data).hexdigest()[:12]


async def work_items(count: int) -> AsyncIterator[int]:
    # An async source: in real life a queue, a socket, a database cursor ...
    for index in range(count):
        if index % 500 == 0:
            await anyio.lowlevel.checkpoint()  # pretend to wait for input now and then
        yield index


async def main() -> None:
    smallest: tuple[int, str] | None = None
    async with (
        anypool.Pool() as pool,
        pool.map(
            digest, work_items(2_000), ordered=False, chunksize="auto", progress=True
        ) as results,
    ):
        async for index, hexdigest in results:
            if smallest is None or hexdigest < smallest[1]:
                smallest = (index, hexdigest)
    assert smallest is not None
    print(f"smallest digest: item {smallest[0]} -> {smallest[1]}")


if __name__ == "__main__":
    anyio.run(main)
