"""Large buffers cross through shared memory: what arrives, and that none of it is left behind.

Every test also runs under the suite's leak check (no process, descriptor or /dev/shm entry
left); these add that no shared mapping outlives the objects that use it, in the parent or in
a worker, even when the worker is killed.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy
import pytest

import anypool
from anypool import _serialize
from anypool.backends.local import framing, wire
from support import open_fds, read_pid

pytestmark = pytest.mark.anyio

# Larger than the threshold above which buffers leave the pipe.
BIG = 4 * _serialize.OUT_OF_BAND_MIN // 8


def shared_mappings() -> int:
    """How many of anypool's shared-memory mappings this process has, once objects only held
    in reference cycles (a traceback's frames, say) are collected."""
    gc.collect()
    return Path("/proc/self/maps").read_text().count("memfd:anypool")


def shared_files() -> int:
    """How many descriptors of anypool's shared-memory files this process holds (a mapping
    holds one; a spare file kept for reuse is one more), once cycles are collected."""
    gc.collect()
    return sum(target.startswith("/memfd:anypool") for target in open_fds().values())


def identity(value: object) -> object:
    return value


_kept: list[numpy.ndarray] = []


def keep(array: numpy.ndarray) -> None:
    _kept.append(array)


def kept() -> list[numpy.ndarray]:
    return _kept


def double_in_place(array: numpy.ndarray) -> numpy.ndarray:
    # The worker may write to what it received: the mapping is its own.
    array *= 2
    return array


def mappings_while_holding(array: numpy.ndarray) -> tuple[int, float]:
    return shared_mappings(), float(array.sum())


def ranges(count: int) -> Iterator[numpy.ndarray]:
    for start in range(count):
        yield numpy.arange(start, start + BIG, dtype=numpy.float64)


def hold_until_killed(array: numpy.ndarray, pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        array.sum()


def doubled(channel: anypool.ChannelEnd) -> None:
    for array in channel:
        channel.send(array * 2)


async def test_an_array_argument_and_result_arrive_whole_and_are_released() -> None:
    array = numpy.random.default_rng(1).random(BIG)
    async with anypool.Pool(1) as pool:
        result = await pool.run(identity, array)
        assert isinstance(result, numpy.ndarray)
        assert result.dtype == array.dtype
        assert numpy.array_equal(result, array)
        assert result.flags.writeable
        # The result lives in shared memory, which goes with it.
        assert shared_mappings() == 1
        del result
        assert shared_mappings() == 0


async def test_the_worker_maps_what_it_receives_and_unmaps_it_when_done() -> None:
    array = numpy.ones(BIG)
    async with anypool.Pool(1) as pool:
        held, total = await pool.run(mappings_while_holding, array)
        assert (held, total) == (1, float(BIG))
        # Nothing of it stays in the worker once the call is over.
        assert await pool.run(shared_mappings) == 0


async def test_a_worker_writing_to_its_argument_leaves_the_callers_array_alone() -> None:
    array = numpy.arange(BIG, dtype=numpy.float64)
    async with anypool.Pool(1) as pool:
        result = await pool.run(double_in_place, array)
    assert numpy.array_equal(result, numpy.arange(BIG, dtype=numpy.float64) * 2)
    assert numpy.array_equal(array, numpy.arange(BIG, dtype=numpy.float64))


async def test_arrays_held_stay_intact_while_later_transfers_reuse_shared_memory() -> None:
    # Shared memory let go of is written again for the next large transfer: never while any
    # array still uses it, in the parent (results held) or in the worker (arguments kept).
    arrays = list(ranges(6))
    async with anypool.Pool(1) as pool:
        held = []
        for array in arrays:
            held.append(await pool.run(identity, array))
            await pool.run(keep, array + 0.5)
            # Both results dropped at once: their memory is free for the next transfers.
            await pool.run(identity, array * 3)
            await pool.run(identity, array[::2])
        for array, result in zip(arrays, held, strict=True):
            assert numpy.array_equal(result, array)
        for array, kept_there in zip(arrays, await pool.run(kept), strict=True):
            assert numpy.array_equal(kept_there, array + 0.5)


async def test_shared_memory_kept_for_reuse_is_bounded_and_goes_with_the_pool() -> None:
    async with anypool.Pool(1) as pool:
        for size in [BIG, 3 * BIG, BIG // 2, 2 * BIG, BIG, 5 * BIG]:
            # Four files each way, all let go of at once.
            arrays = [numpy.full(size, float(n)) for n in range(4)]
            for array, result in zip(arrays, await pool.run(identity, arrays), strict=True):
                assert numpy.array_equal(result, array)
            del result
            # At most two spare files, here and in the worker (which holds no array now).
            assert shared_files() <= 2
            assert await pool.run(shared_files) <= 2
        assert shared_files() > 0
    assert shared_files() == 0


async def test_a_forked_worker_does_not_take_the_parents_spare_shared_memory() -> None:
    # A spare file inherited through fork() is still the parent's to write again: were the
    # worker to write it as well, transfers of both would overwrite each other.
    async with anypool.Pool(1) as pool:
        await pool.run(identity, numpy.ones(BIG))
        assert shared_files() > 0  # the result's memory, kept as a spare
        async with anypool.Pool(1, start_method="fork") as forked:
            assert await forked.run(shared_files) == 0


async def test_read_only_arrays_stay_read_only_and_bytearrays_stay_bytearrays() -> None:
    frozen = numpy.zeros(BIG)
    frozen.flags.writeable = False
    data = bytearray(os.urandom(2 * _serialize.OUT_OF_BAND_MIN))
    async with anypool.Pool(1) as pool:
        result = await pool.run(identity, frozen)
        assert not result.flags.writeable
        echoed = await pool.run(identity, data)
    assert type(echoed) is bytearray
    assert echoed == data


async def test_many_large_and_non_contiguous_arrays_in_one_call_all_arrive() -> None:
    # More buffers than one message carries out of band: the rest go in band.
    arrays = [numpy.full(BIG, index, dtype=numpy.float32) for index in range(70)]
    strided = numpy.arange(4 * BIG, dtype=numpy.float64)[::2]
    async with anypool.Pool(1) as pool:
        results, strided_back = await pool.run(identity, (arrays, strided))
    assert len(results) == 70
    for index, result in enumerate(results):
        assert numpy.array_equal(result, arrays[index])
    assert numpy.array_equal(strided_back, strided)


async def test_map_items_and_results_go_through_shared_memory() -> None:
    items = [numpy.full(BIG, index, dtype=numpy.float64) for index in range(6)]
    async with anypool.Pool(2) as pool:
        results = [r async for r in pool.map(double_in_place, items, chunksize=2)]
    for index, result in enumerate(results):
        assert numpy.array_equal(result, numpy.full(BIG, 2 * index, dtype=numpy.float64))
    del results, result
    assert shared_mappings() == 0


async def test_stream_items_arrive_in_order_and_are_released() -> None:
    async with anypool.Pool(1) as pool:
        received = []
        async with pool.stream(ranges, 5) as items:
            async for array in items:
                received.append(float(array[0]))
                del array
        assert received == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert shared_mappings() == 0


async def test_channel_items_go_through_shared_memory_both_ways() -> None:
    async with anypool.Pool(1) as pool, pool.open_channel(doubled) as channel:
        for index in range(3):
            await channel.send(numpy.full(BIG, index, dtype=numpy.float64))
            result = await channel.receive()
            assert numpy.array_equal(result, numpy.full(BIG, 2 * index, dtype=numpy.float64))
        await channel.send_eof()
        await channel.result()


async def test_a_worker_killed_while_using_shared_memory_leaves_none_behind(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    async with anypool.Pool(1) as pool:
        async with anyio.create_task_group() as group:

            async def call() -> None:
                with pytest.raises(anypool.BrokenWorkerError) as caught:
                    await pool.run(hold_until_killed, numpy.ones(BIG), str(pid_file))
                assert caught.value.signal_name == "SIGKILL"

            group.start_soon(call)
            os.kill(await read_pid(pid_file), signal.SIGKILL)
        assert shared_mappings() == 0
        assert numpy.array_equal(await pool.run(identity, numpy.ones(BIG)), numpy.ones(BIG))
    # The leak check then finds no descriptor or /dev/shm entry left.


async def test_a_cancelled_call_with_a_large_argument_leaves_no_shared_memory(
    tmp_path: Path,
) -> None:
    async with anypool.Pool(1) as pool:
        with anyio.move_on_after(0.5):
            await pool.run(hold_until_killed, numpy.ones(BIG), str(tmp_path / "pid"))
        assert shared_mappings() == 0
        assert pool.stats().workers_alive == 0


def test_shared_memory_is_readable_by_this_user_only() -> None:
    payload = _serialize.OutOfBand(b"pickle", [memoryview(bytes(_serialize.OUT_OF_BAND_MIN))])
    _, _, fds = framing.encode_frame(wire.RESULT, payload)
    try:
        assert len(fds) == 1
        status = os.fstat(fds[0])
        assert status.st_mode & 0o777 == 0o600
        assert status.st_uid == os.getuid()
        assert status.st_size == _serialize.OUT_OF_BAND_MIN
        # Anonymous: nothing on the filesystem names it.
        assert os.readlink(f"/proc/self/fd/{fds[0]}").startswith("/memfd:anypool")
    finally:
        for fd in fds:
            os.close(fd)


def large_bytes_pair(data: bytes) -> tuple[bytes, bytes]:
    return data, data[::-1]


async def test_large_bytes_arguments_and_results_arrive_as_bytes() -> None:
    data = os.urandom(2 * _serialize.OUT_OF_BAND_MIN)
    async with anypool.Pool(1) as pool:
        echoed = await pool.run(identity, data)
        pair = await pool.run(large_bytes_pair, data=data)
    assert type(echoed) is bytes
    assert echoed == data
    assert pair == (data, data[::-1])
    assert all(type(part) is bytes for part in pair)


def test_large_bytes_leave_the_pickle_and_small_ones_stay() -> None:
    from anypool._serialize import dumps, dumps_call_arguments, loads

    data = os.urandom(_serialize.OUT_OF_BAND_MIN)
    args = (b"small", data)
    call = dumps_call_arguments((identity, args, {}, "asyncio"), identity, args, {})
    assert isinstance(call, _serialize.OutOfBand)
    assert len(call.buffers) == 1
    assert len(call.data) < 1024
    assert loads(call) == (identity, (b"small", data), {}, "asyncio")
    result = dumps((data, 1), out_of_band=True)
    assert isinstance(result, _serialize.OutOfBand)
    assert loads(result) == (data, 1)
    assert type(dumps(b"small", out_of_band=True)) is bytes
