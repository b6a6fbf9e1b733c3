"""Arguments and results of any size cross the pipe intact, around the pipe's 64 KiB buffer
and far beyond it."""

from __future__ import annotations

import os
import socket

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anypool
import workers
from anypool.backends.local import wire
from anypool.backends.local.transport import ChannelClosed, MessageChannel
from support import gone, read_pid

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
SIZES = [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 100 * MiB]
SIZE_IDS = ["0", "1", "64KiB-1", "64KiB", "64KiB+1", "100MiB"]


def payload(size: int) -> bytes:
    """``size`` bytes that are not all alike, so that a shifted or truncated copy differs."""
    pattern = bytes(range(251))  # a prime length: no period lines up with a power of two
    return (pattern * (size // len(pattern) + 1))[:size]


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
async def test_payload_round_trips_as_argument_and_result(size: int) -> None:
    data = payload(size)
    async with anypool.Pool(1) as pool:
        assert await pool.run(workers.identity, data) == data


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
async def test_result_of_any_size_arrives_whole(size: int) -> None:
    async with anypool.Pool(1) as pool:
        assert await pool.run(workers.zeros, size) == bytes(size)


async def test_large_payloads_on_two_workers_at_once_do_not_mix() -> None:
    first, second = payload(8 * MiB), payload(8 * MiB + 3)[::-1]
    results: dict[str, bytes] = {}

    async def echo(name: str, data: bytes) -> None:
        results[name] = await pool.run(workers.identity, data)

    async with anypool.Pool(2) as pool, anyio.create_task_group() as group:
        group.start_soon(echo, "first", first)
        group.start_soon(echo, "second", second)
    assert results == {"first": first, "second": second}


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=200 * KiB))
async def test_any_bytes_round_trip(data: bytes) -> None:
    async with anypool.Pool(1) as pool:
        assert await pool.run(workers.identity, data) == data


async def test_cancelling_a_call_with_a_large_argument_leaves_nothing_behind(tmp_path) -> None:
    # The no_leaks fixture checks /dev/shm and the descriptors after the test.
    pid_file = tmp_path / "pid"
    async with anypool.Pool(1) as pool:
        async with anyio.create_task_group() as group:
            group.start_soon(
                pool.run, lambda data: workers.write_pid_and_sleep(pid_file, 60), payload(32 * MiB)
            )
            pid = await read_pid(pid_file)
            group.cancel_scope.cancel()
        assert gone(pid)
        assert await pool.run(workers.identity, payload(MiB)) == payload(MiB)


async def test_worker_dying_with_a_large_argument_leaves_nothing_behind() -> None:
    async with anypool.Pool(1) as pool:
        with pytest.raises(anypool.BrokenWorkerError):
            await pool.run(lambda data: workers.exit_immediately(3), payload(32 * MiB))
        assert await pool.run(workers.identity, payload(MiB)) == payload(MiB)


async def test_large_result_of_an_abandoned_call_is_discarded_without_leaks(tmp_path) -> None:
    pid_file = tmp_path / "pid"

    def large_result_once_started() -> bytes:
        workers.write_pid(pid_file)
        return workers.sleep_then_return(0.2, payload(32 * MiB))

    async with anypool.Pool(1) as pool:
        patient = pool.with_options(kill_on_cancel=False)
        async with anyio.create_task_group() as group:
            group.start_soon(patient.run, large_result_once_started)
            pid = await read_pid(pid_file)
            group.cancel_scope.cancel()
        assert await pool.run(workers.current_pid) == pid


async def test_closing_a_channel_ends_the_write_of_a_frame_the_pipe_took_in_part() -> None:
    # Nobody reads the other end: the pipe takes part of the frame, a task of the channel's
    # waits to write the rest, shielded once it has begun. Closed under that task, the
    # descriptor leaves the event loop's watch without a word: the task must stop, not wait
    # for ever (and hold up every later frame, and the event loop's end, with it).
    ours, theirs = socket.socketpair()
    channel = MessageChannel(os.dup(ours.fileno()))
    ours.close()
    try:
        assert channel.send_nowait(wire.CALL, payload(8 * MiB))
        await anyio.wait_all_tasks_blocked()  # the task waits to write
        channel.close()
        with anyio.fail_after(5), pytest.raises(ChannelClosed):
            await channel.send(wire.CALL, b"next")
    finally:
        channel.close()
        theirs.close()
