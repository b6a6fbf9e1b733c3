"""A worker keeps state across messages: compress a stream of data through a two-way channel.

The parent sends chunks as they arrive and receives compressed pieces as the worker makes them,
in two tasks, so neither direction waits for the other; each direction holds back when the
other side falls behind. When the input ends, the parent says so (send_eof), the worker flushes
its compressor and returns a summary, which the parent gets from the channel.
"""

import hashlib
import random
import zlib

import anyio

import anypool


def compress(channel: anypool.ChannelEnd[bytes, bytes], level: int) -> dict[str, int]:
    """Runs in a worker: compress every chunk the parent sends, send the pieces back."""
    compressor = zlib.compressobj(level)
    size_in = size_out = 0
    for chunk in channel:  # until the parent calls send_eof()
        size_in += len(chunk)
        piece = compressor.compress(chunk)
        if piece:
            size_out += len(piece)
            channel.send(piece)
    tail = compressor.flush()
    size_out += len(tail)
    channel.send(tail)
    return {"bytes in": size_in, "bytes out": size_out}


def make_chunks(count: int, size: int) -> list[bytes]:
    rng = random.Random(7)
    words = [b"anypool", b"asyncio", b"trio", b"worker", b"channel", b"pipe"]
    return [b" ".join(rng.choice(words) for _ in range(size // 6))[:size] for _ in range(count)]


async def main() -> None:
    chunks = make_chunks(count=200, size=64 * 1024)
    compressed = bytearray()
    async with anypool.Pool(max_workers=1) as pool, pool.open_channel(compress, 6) as channel:

        async def send_all() -> None:
            for chunk in chunks:
                await channel.send(chunk)
            await channel.send_eof()

        async with anyio.create_task_group() as group:
            group.start_soon(send_all)
            async for piece in channel:  # ends when compress() returns
                compressed += piece
        summary = await channel.result()

    original = b"".join(chunks)
    assert zlib.decompress(compressed) == original
    print(f"summary from the worker: {summary}")
    print(f"round trip intact: {hashlib.sha256(zlib.decompress(compressed)).hexdigest()[:16]}")
    print(f"ratio: {len(compressed) / len(original):.3f}")


if __name__ == "__main__":
    anyio.run(main)
