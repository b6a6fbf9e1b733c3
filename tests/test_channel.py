"""pool.open_channel: a function running in a worker with a two-way channel to it.

The parent's ``Channel`` is an anyio object stream: ``send`` holds back once the function has
``buffer`` items it did not take, ``receive`` returns what the function sends and signals its
end; the function's end is a blocking ``ChannelEnd`` (or an awaitable ``AsyncChannelEnd`` for an
``async def``). Leaving the block normally closes the channel (the function's recv/send fail, and
a function that does not return within kill_grace is killed); leaving it by an exception or a
cancellation kills the worker before the exception propagates.

Files, not timing, coordinate the worker with the test: a worker writes its pid or a note to a
file, or logs each item it sends. Tests that hold for plain and ``async def`` functions alike
run both, one after the other, on the same pool.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest
import sniffio
import trio

import anypool
import workers
from anypool.backends import Feature
from support import (
    ASYNCIO_BACKEND_IDS,
    ASYNCIO_BACKENDS,
    contract_pool,
    dead,
    gone,
    read_pid,
    stays_true,
    wait_until,
    wait_until_async,
)

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    pytest.mark.needs(Feature.CHANNEL),
    pytest.mark.anyio,
    # A channel that hangs fails in seconds rather than after the suite's default timeout.
    pytest.mark.timeout(30),
]

KILL_GRACE = 0.5
# For tests where the kill after the grace period is the expected path: keeps them short.
SHORT_GRACE = 0.25
KINDS = ["sync", "async"]
# How long a log must stay the same length to count as no longer growing.
STABLE_PERIOD = 0.2
BIG = 8 * 1024 * 1024
# What workers.channel_echo returns: the type of the worker's end of the channel.
ECHO_SYNC = "anypool.ChannelEnd"


# --- helpers ---------------------------------------------------------------------------------


def channel_function(name: str, kind: str) -> Callable[..., Any]:
    """The worker function ``channel_<name>`` (``kind == "sync"``) or its ``async def`` twin."""
    return getattr(workers, f"channel_{name}" if kind == "sync" else f"async_channel_{name}")


def new_pool(max_workers: int = 1, kill_grace: float = KILL_GRACE) -> anypool.Pool:
    return contract_pool(max_workers, kill_grace=kill_grace)


def caller_library() -> str:
    """ "trio" or "asyncio" (uvloop included): the kind of loop an async function gets."""
    return sniffio.current_async_library()


def echo_result(kind: str) -> str:
    """What the echo function of ``kind`` returns: its end's type (and its event loop)."""
    if kind == "sync":
        return ECHO_SYNC
    return f"anypool.AsyncChannelEnd on {caller_library()}"


def assert_no_call_running(pool: anypool.Pool) -> None:
    stats = pool.stats()
    assert stats.calls_running == 0, stats
    assert stats.workers_busy == 0, stats


def lines_of(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def items_logged(log: Path) -> int:
    return sum(line.isdigit() for line in lines_of(log))


async def settled_item_count(log: Path, timeout: float = 5.0) -> int:
    """The number of items in ``log`` once it has stopped growing for STABLE_PERIOD seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = items_logged(log)
        if await stays_true(lambda count=count: items_logged(log) == count, STABLE_PERIOD):
            return count
    return items_logged(log)


def assert_remote_value_error(error: BaseException, message: str) -> None:
    assert type(error) is ValueError
    assert str(error) == message
    assert isinstance(error.__cause__, anypool.RemoteTraceback)


async def collect_into(received: list[object], channel: anypool.Channel) -> None:
    """Append each item to ``received``, so that what came before an exception stays seen."""
    async for item in channel:
        received.append(item)


async def send_until_it_fails(channel: anypool.Channel, sent: list[int]) -> None:
    """Send 0, 1, 2, ... (at most 100 items), appending each one sent to ``sent``."""
    for item in range(100):
        await channel.send(item)
        sent.append(item)
    raise AssertionError("100 items were sent")


class ConsumerError(Exception):
    """Raised by the test's own code inside the channel's block, not by a worker."""


# --- the basics ------------------------------------------------------------------------------


async def test_items_sent_come_back_from_an_echo_in_order() -> None:
    items = [1, "two", (3, [4]), None, {"five": 5.0}]
    async with new_pool() as pool:
        for kind in KINDS:
            async with pool.open_channel(channel_function("echo", kind)) as channel:
                assert isinstance(channel, anypool.Channel)
                assert isinstance(channel, anyio.abc.ObjectStream)
                for item in items:
                    await channel.send(item)
                    assert await channel.receive() == item, kind
                await channel.send_eof()
                with pytest.raises(anyio.EndOfStream):
                    await channel.receive()
                # The worker's end: a ChannelEnd, or an AsyncChannelEnd on the caller's kind of
                # event loop.
                assert await channel.result() == echo_result(kind)
            assert_no_call_running(pool)
        assert pool.stats().calls_completed == 2
    assert anypool.ChannelEnd.__module__ == anypool.AsyncChannelEnd.__module__ == "anypool"


async def test_async_for_yields_the_items_in_order_and_ends_when_the_function_returns() -> None:
    items = list(range(20))
    async with new_pool() as pool:
        for kind in KINDS:
            async with pool.with_options(buffer=4).open_channel(
                channel_function("send_items", kind), items, value=f"{kind} value"
            ) as channel:
                assert [item async for item in channel] == items, kind
                with pytest.raises(anyio.EndOfStream):
                    await channel.receive()
                assert await channel.result() == f"{kind} value"
            assert_no_call_running(pool)


async def test_send_eof_ends_the_workers_recv_and_iteration_after_the_items_sent_before() -> None:
    async with new_pool() as pool:
        for kind in KINDS:
            async with pool.open_channel(channel_function("recv_iterate_recv", kind)) as channel:
                for item in range(5):
                    await channel.send(item)
                await channel.send_eof()
                await channel.send_eof()  # idempotent
                # recv() took the first item, the loop the others; then recv() raised EOFError.
                assert await channel.result() == (0, [1, 2, 3, 4], "EOFError"), kind
            assert_no_call_running(pool)


async def test_send_after_send_eof_raises_closed_resource_error_and_receive_goes_on() -> None:
    async with new_pool() as pool, pool.open_channel(workers.channel_echo) as channel:
        await channel.send("before")
        await channel.send_eof()
        with pytest.raises(anyio.ClosedResourceError):
            await channel.send("after")
        assert await channel.receive() == "before"
        with pytest.raises(anyio.EndOfStream):
            await channel.receive()
        assert await channel.result() == ECHO_SYNC


async def test_using_the_channel_without_async_with_raises_runtime_error() -> None:
    async with new_pool() as pool:
        channel = pool.open_channel(workers.channel_echo)
        for use in (
            lambda: channel.send(1),
            channel.receive,
            channel.send_eof,
            channel.result,
        ):
            with pytest.raises(RuntimeError, match="async with"):
                await use()
        with pytest.raises(RuntimeError, match="async with"):
            async for _ in channel:
                pass
        assert pool.stats().workers_alive == 0


async def test_poll_tells_whether_recv_would_return_at_once() -> None:
    async with new_pool() as pool, pool.open_channel(workers.channel_poll_then_recv) as channel:
        assert await channel.receive() == "polling"
        await channel.send("item")
        await channel.send_eof()
        answers, waited = await channel.result()
    # Nothing sent (poll(), then poll(0.1) that waited); sent; the item; EOF pending.
    assert answers == [False, False, True, "item", True]
    assert 0.09 <= waited < 5


# --- async functions in the worker -----------------------------------------------------------


async def test_recv_of_an_async_function_lets_other_tasks_of_its_loop_run(tmp_path) -> None:
    marker = tmp_path / "ticked"
    async with (
        new_pool() as pool,
        pool.open_channel(workers.async_channel_tick_while_receiving, marker) as channel,
    ):
        # recv() is waiting meanwhile: the ticker must tick for the marker to appear.
        assert await wait_until_async(marker.exists), "the ticker did not run during recv()"
        await channel.send("item")
        library, before, after, item = await channel.result()
    assert (library, item) == (caller_library(), "item")
    assert after - before >= 3


async def test_send_of_an_async_function_lets_other_tasks_of_its_loop_run(tmp_path) -> None:
    marker = tmp_path / "ticked"
    async with (
        new_pool() as pool,
        pool.with_options(buffer=1).open_channel(
            workers.async_channel_tick_while_sending, marker
        ) as channel,
    ):
        # The second send waits for room meanwhile: the ticker must tick for the marker.
        assert await wait_until_async(marker.exists), "the ticker did not run during send()"
        assert await channel.receive() == "first"
        assert await channel.receive() == "second"
        library, before, after, outcome = await channel.result()
    assert (library, outcome) == (caller_library(), "sent")
    assert after - before >= 3


# --- several tasks, big items ----------------------------------------------------------------


async def test_one_task_sends_while_another_receives() -> None:
    items = list(range(300))

    async def send_all(channel: anypool.Channel) -> None:
        for item in items:
            await channel.send(item)
        await channel.send_eof()

    async with new_pool() as pool:
        for kind in KINDS:
            received: list[int] = []
            async with pool.with_options(buffer=4).open_channel(
                channel_function("echo", kind)
            ) as channel:
                with anyio.fail_after(20):
                    async with anyio.create_task_group() as group:
                        group.start_soon(send_all, channel)
                        group.start_soon(collect_into, received, channel)
                assert await channel.result() == echo_result(kind)
            assert received == items, kind
            assert_no_call_running(pool)


async def test_big_items_travel_both_ways_at_once_without_deadlock() -> None:
    """The function sends big items before it receives any, while the parent sends big items
    too: each side's writes must not wait for the other side's reads forever."""
    count = 2

    async def send_big_items(channel: anypool.Channel) -> None:
        for index in range(count):
            await channel.send(bytes([100 + index]) * BIG)

    async def receive_big_items(channel: anypool.Channel, received: list[bytes]) -> None:
        for _ in range(count):
            received.append(await channel.receive())

    async with new_pool() as pool:
        for kind in KINDS:
            received: list[bytes] = []
            async with pool.open_channel(
                channel_function("exchange_big_items", kind), count, BIG
            ) as channel:
                with anyio.fail_after(20):
                    async with anyio.create_task_group() as group:
                        group.start_soon(send_big_items, channel)
                        group.start_soon(receive_big_items, channel, received)
                    summaries = await channel.result()
            assert summaries == [(BIG, 100 + index, True) for index in range(count)], kind
            assert [len(item) for item in received] == [BIG] * count
            assert all(item == bytes([index]) * BIG for index, item in enumerate(received))
            assert_no_call_running(pool)


async def test_big_items_echoed_while_more_are_sent() -> None:
    count = 3
    received: list[bytes] = []

    async def send_big_items(channel: anypool.Channel) -> None:
        for index in range(count):
            await channel.send(bytes([index]) * BIG)
        await channel.send_eof()

    async with new_pool() as pool, pool.open_channel(workers.channel_echo) as channel:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(send_big_items, channel)
                group.start_soon(collect_into, received, channel)
        assert await channel.result() == ECHO_SYNC
    assert len(received) == count
    assert all(item == bytes([index]) * BIG for index, item in enumerate(received))


# --- a cancelled receive ---------------------------------------------------------------------


async def test_a_timed_out_receive_loses_nothing_and_the_channel_goes_on() -> None:
    count, size = 4, 4 * 1024 * 1024
    big_items = [bytes([index]) * size for index in range(count)]
    async with new_pool() as pool:
        async with pool.open_channel(workers.channel_echo) as channel:
            for item in range(3):
                with anyio.move_on_after(0.05) as scope:
                    await channel.receive()
                assert scope.cancelled_caught
                await channel.send(item)
                assert await channel.receive() == item
            await channel.send_eof()
            assert await channel.result() == ECHO_SYNC

        # Deadlines so short that they expire while big items are arriving, part-way through:
        # every item still arrives whole, in order.
        received: list[bytes] = []
        timeouts = 0
        async with pool.open_channel(workers.channel_send_items, big_items, "sent") as channel:
            with anyio.fail_after(20):
                while len(received) < count:
                    with anyio.move_on_after(0.0005) as scope:
                        received.append(await channel.receive())
                    timeouts += scope.cancelled_caught
            assert await channel.result() == "sent"
        assert_no_call_running(pool)
    assert received == big_items
    assert timeouts > 0


# --- outcomes --------------------------------------------------------------------------------


async def test_exception_is_raised_by_receive_after_the_items_sent_before_it() -> None:
    async with new_pool() as pool:
        pid = await pool.run(workers.current_pid)
        for kind in KINDS:
            fn = channel_function("send_items_then_raise", kind)
            async with pool.open_channel(fn, [1, 2], "boom") as channel:
                assert await channel.receive() == 1
                assert await channel.receive() == 2
                with pytest.raises(ValueError, match=r"^boom$") as info:
                    await channel.receive()
                assert_remote_value_error(info.value, "boom")
                assert fn.__name__ in str(info.value.__cause__)
            # Received once: leaving the block does not raise it again. The worker is kept.
            assert_no_call_running(pool)
            assert await pool.run(workers.current_pid) == pid
        assert pool.stats().calls_failed == 2


async def test_async_for_raises_the_exception_after_the_items_before_it() -> None:
    received: list[object] = []
    async with (
        new_pool() as pool,
        pool.open_channel(workers.channel_send_items_then_raise, ["a", "b"], "boom") as channel,
    ):
        with pytest.raises(ValueError, match=r"^boom$") as info:
            await collect_into(received, channel)
        assert_remote_value_error(info.value, "boom")
    assert received == ["a", "b"]


async def test_result_returns_the_value_or_raises_the_exception_of_the_function() -> None:
    async with new_pool() as pool:
        async with pool.open_channel(workers.channel_return, {"answer": 42}) as channel:
            assert await channel.result() == {"answer": 42}
            # Asked again: the same value.
            assert await channel.result() == {"answer": 42}
        assert_no_call_running(pool)

        async with pool.open_channel(
            workers.channel_send_items_then_raise, [1, 2], "boom"
        ) as channel:
            with pytest.raises(ValueError, match=r"^boom$") as info:
                await channel.result()
            assert_remote_value_error(info.value, "boom")
        assert_no_call_running(pool)


async def test_result_drops_unreceived_items_and_does_not_block_the_worker() -> None:
    """The function sends 50 items with buffer=4 and nobody receives them: result() takes
    them so that the function can go on, and drops them."""
    async with new_pool() as pool:
        async with pool.with_options(buffer=4).open_channel(
            workers.channel_send_items, list(range(50)), "all sent"
        ) as channel:
            with anyio.fail_after(10):
                assert await channel.result() == "all sent"
            with pytest.raises(anyio.EndOfStream):
                await channel.receive()
        assert_no_call_running(pool)


async def test_an_exception_nobody_received_is_raised_when_the_block_is_left() -> None:
    """The function raises while the parent only sends: leaving the block raises it."""
    async with new_pool() as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(ValueError, match=r"^nobody received this$") as info:
            async with pool.open_channel(
                workers.channel_recv_one_then_raise, "nobody received this"
            ) as channel:
                await channel.send("the one item")
        assert_remote_value_error(info.value, "nobody received this")
        assert_no_call_running(pool)
        assert await pool.run(workers.current_pid) == pid


async def test_send_after_the_function_raised_or_returned_raises() -> None:
    async with new_pool() as pool:
        view = pool.with_options(buffer=4)
        async with view.open_channel(workers.channel_raise, "raised at once") as channel:
            sent: list[int] = []
            with anyio.fail_after(10), pytest.raises(ValueError, match="raised at once") as info:
                await send_until_it_fails(channel, sent)
            assert len(sent) <= 4
            assert_remote_value_error(info.value, "raised at once")
        # Seen by a send: the block does not raise it again.
        assert_no_call_running(pool)

        async with view.open_channel(workers.channel_return, "returned at once") as channel:
            sent = []
            with anyio.fail_after(10), pytest.raises(anyio.BrokenResourceError):
                await send_until_it_fails(channel, sent)
            assert len(sent) <= 4
            assert await channel.result() == "returned at once"
            with pytest.raises(anyio.EndOfStream):
                await channel.receive()
        assert_no_call_running(pool)
        assert await pool.run(workers.square, 3) == 9


async def test_an_unpicklable_item_raises_serialization_error_and_the_channel_goes_on() -> None:
    async with new_pool() as pool:
        async with pool.open_channel(workers.channel_echo) as channel:
            with pytest.raises(anypool.SerializationError, match=re.escape("_thread.lock")):
                await channel.send(threading.Lock())
            await channel.send("still works")
            assert await channel.receive() == "still works"
            await channel.send_eof()
            assert await channel.result() == ECHO_SYNC
        assert_no_call_running(pool)


# --- the worker dies -------------------------------------------------------------------------


async def test_worker_dying_mid_channel_raises_broken_worker_error() -> None:
    async with new_pool() as pool:
        # While receiving: after the items sent before.
        async with pool.open_channel(workers.channel_send_items_then_exit, [1, 2], 3) as channel:
            assert await channel.receive() == 1
            assert await channel.receive() == 2
            with pytest.raises(anypool.BrokenWorkerError) as info:
                await channel.receive()
            assert info.value.exitcode == 3
            assert gone(info.value.pid)
            with pytest.raises(anypool.BrokenWorkerError):
                await channel.result()
        assert_no_call_running(pool)
        assert pool.stats().calls_failed == 1
        assert await pool.run(workers.current_pid) != info.value.pid

        # While sending.
        async with pool.with_options(buffer=4).open_channel(
            workers.channel_send_items_then_exit, [], 3
        ) as channel:
            with anyio.fail_after(10), pytest.raises(anypool.BrokenWorkerError) as info:
                await send_until_it_fails(channel, [])
            assert info.value.exitcode == 3
            with pytest.raises(anypool.BrokenWorkerError):
                await channel.receive()
        assert gone(info.value.pid)
        assert_no_call_running(pool)
        assert await pool.run(workers.square, 3) == 9


# Were the end missed again, leaving the block would wait for it for ever, out of reach of
# the signal method: the thread method ends the run instead.
@pytest.mark.timeout(60, method="thread")
async def test_items_that_arrive_with_the_workers_death_are_received_before_the_error(
    tmp_path: Path,
) -> None:
    # Found by the fuzz tests on uvloop: a worker that exits with a message of ours unread
    # resets its socket (POLLERR), and uvloop then drops the reader after one last callback.
    # The items that came with the reset were read on that callback; the wait after them hung.
    go = tmp_path / "go"
    async with new_pool() as pool:
        async with pool.open_channel(
            workers.channel_send_items_then_exit_with_an_item_unread, [1, 2], str(go), 3
        ) as channel:
            pid = await channel.receive()
            await channel.send("never read")
            go.touch()
            # Block the event loop until the worker is gone: its items and its end arrive as one.
            assert wait_until(lambda: dead(pid))
            assert await channel.receive() == 1
            assert await channel.receive() == 2
            with pytest.raises(anypool.BrokenWorkerError) as info:
                await channel.receive()
            assert info.value.exitcode == 3
        assert gone(pid)
        assert await pool.run(workers.square, 3) == 9


# --- closing ---------------------------------------------------------------------------------


async def test_closing_makes_recv_raise_eof_error_and_send_broken_pipe_error(tmp_path) -> None:
    async with new_pool() as pool:
        for kind, how in [("sync", "aclose"), ("async", "aclose"), ("sync", "leaving")]:
            case = f"{kind} function, {how}"
            pid_path, note = tmp_path / f"{kind}-{how}.pid", tmp_path / f"{kind}-{how}.note"
            async with pool.open_channel(
                channel_function("note_close", kind), pid_path, note
            ) as channel:
                await channel.send("taken before the close")
                pid = await read_pid(pid_path)
                if how == "aclose":
                    await channel.aclose()
                    await channel.aclose()  # idempotent
                    with pytest.raises(anyio.ClosedResourceError):
                        await channel.send("after the close")
                    with pytest.raises(anyio.ClosedResourceError):
                        await channel.receive()
            assert note.read_text() == "EOFError BrokenPipeError", case
            assert_no_call_running(pool)
            # The function returned within kill_grace: its worker was kept.
            assert await pool.run(workers.current_pid) == pid, case


@pytest.mark.timing
async def test_aclose_kills_a_function_that_does_not_return_within_kill_grace(tmp_path) -> None:
    pid_path = tmp_path / "pid"
    async with new_pool(kill_grace=SHORT_GRACE) as pool:
        async with pool.open_channel(workers.channel_write_pid_and_sleep, pid_path, 60) as channel:
            pid = await read_pid(pid_path)
            started = time.monotonic()
            await channel.aclose()
            took = time.monotonic() - started
            assert gone(pid)
        assert SHORT_GRACE * 0.8 <= took < SHORT_GRACE + 5
        assert_no_call_running(pool)
        assert await pool.run(workers.current_pid) != pid


# --- leaving the block by an exception or a cancellation -------------------------------------


class ChannelVictim:
    """A channel to a function that records its worker's pid and sleeps for a minute, the
    parent blocked in ``receive()``: only a kill ends it.

    ``run()`` records whether that pid still existed when the exception came out of the block.
    """

    def __init__(
        self,
        pool: anypool.Pool,
        tmp_path: Path,
        fn: Callable[..., Any] = workers.channel_write_pid_and_sleep,
    ) -> None:
        self.pool = pool
        self.fn = fn
        self.pid_file = tmp_path / "victim.pid"
        self.started = anyio.Event()
        self.pid: int | None = None
        self.exception: BaseException | None = None
        self.pid_existed_when_left: bool | None = None

    async def run(self, fail_inside: bool = False) -> None:
        try:
            async with self.pool.open_channel(self.fn, self.pid_file, 60) as channel:
                self.pid = await read_pid(self.pid_file)
                self.started.set()
                if fail_inside:
                    raise ConsumerError
                await channel.receive()
        except BaseException as exception:
            self.exception = exception
            if self.pid is not None:
                self.pid_existed_when_left = psutil.pid_exists(self.pid)
            raise
        raise AssertionError("the channel's block was left without an exception")

    async def started_and_blocked(self) -> None:
        """Wait until the worker runs and the block waits in ``receive()``."""
        await self.started.wait()
        await anyio.wait_all_tasks_blocked()

    def assert_killed_before_the_exception_propagated(self) -> None:
        assert self.pid is not None, "the function never started"
        assert self.pid_existed_when_left is False, (
            f"worker {self.pid} still existed when the exception left the block"
        )

    async def assert_pool_still_usable(self) -> None:
        assert_no_call_running(self.pool)
        stats = self.pool.stats()
        assert stats.calls_cancelled == 1, stats
        assert stats.workers_replaced == 1, stats
        assert await self.pool.run(workers.square, 3) == 9
        assert await self.pool.run(workers.current_pid) != self.pid


async def test_an_exception_in_the_block_kills_the_worker(tmp_path) -> None:
    async with new_pool() as pool:
        victim = ChannelVictim(pool, tmp_path)
        with pytest.raises(ConsumerError):
            await victim.run(fail_inside=True)
        victim.assert_killed_before_the_exception_propagated()
        await victim.assert_pool_still_usable()


async def run_under_fail_after(victim: ChannelVictim) -> None:
    """The victim under ``anyio.fail_after``, whose deadline passes once it is blocked."""

    async def expire_when_blocked() -> None:
        await victim.started_and_blocked()
        scope.deadline = anyio.current_time()

    with anyio.fail_after(60) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(expire_when_blocked)
            await victim.run()


async def test_fail_after_kills_the_worker(tmp_path) -> None:
    async with new_pool() as pool:
        victim = ChannelVictim(pool, tmp_path)
        with pytest.raises(TimeoutError):
            await run_under_fail_after(victim)
        victim.assert_killed_before_the_exception_propagated()
        await victim.assert_pool_still_usable()


async def test_move_on_after_kills_the_worker(tmp_path) -> None:
    async def expire_when_blocked(scope: anyio.CancelScope) -> None:
        await victim.started_and_blocked()
        scope.deadline = anyio.current_time()

    async with new_pool() as pool:
        victim = ChannelVictim(pool, tmp_path)
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(expire_when_blocked, scope)
                await victim.run()
        assert scope.cancelled_caught
        victim.assert_killed_before_the_exception_propagated()
        await victim.assert_pool_still_usable()


async def test_a_cancelled_task_group_kills_the_worker(tmp_path) -> None:
    async with new_pool() as pool:
        victim = ChannelVictim(pool, tmp_path)
        async with anyio.create_task_group() as group:
            group.start_soon(victim.run)
            await victim.started_and_blocked()
            group.cancel_scope.cancel()
        assert isinstance(victim.exception, anyio.get_cancelled_exc_class())
        victim.assert_killed_before_the_exception_propagated()
        await victim.assert_pool_still_usable()


@pytest.mark.timing
async def test_a_worker_ignoring_sigterm_is_killed_after_kill_grace(tmp_path) -> None:
    async with new_pool(kill_grace=SHORT_GRACE) as pool:
        victim = ChannelVictim(pool, tmp_path, workers.channel_ignore_sigterm_and_sleep)
        async with anyio.create_task_group() as group:
            group.start_soon(victim.run)
            await victim.started_and_blocked()
            started = time.monotonic()
            group.cancel_scope.cancel()
        took = time.monotonic() - started
        victim.assert_killed_before_the_exception_propagated()
        assert SHORT_GRACE * 0.8 <= took < SHORT_GRACE + 5
        await victim.assert_pool_still_usable()


async def run_under_asyncio_timeout(victim: ChannelVictim) -> None:
    """The victim under ``asyncio.timeout``, rescheduled to now once it is blocked."""

    async def expire_when_blocked() -> None:
        await victim.started_and_blocked()
        timeout.reschedule(asyncio.get_running_loop().time())

    async with asyncio.timeout(60) as timeout:
        expiry = asyncio.create_task(expire_when_blocked())
        try:
            await victim.run()
        finally:
            expiry.cancel()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in Python 3.11")
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
async def test_asyncio_timeout_kills_the_worker(tmp_path) -> None:
    async with new_pool() as pool:
        victim = ChannelVictim(pool, tmp_path)
        with pytest.raises(TimeoutError):
            await run_under_asyncio_timeout(victim)
        victim.assert_killed_before_the_exception_propagated()
        await victim.assert_pool_still_usable()


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
async def test_asyncio_task_cancel_kills_the_worker(tmp_path) -> None:
    async with new_pool() as pool:
        victim = ChannelVictim(pool, tmp_path)
        task = asyncio.create_task(victim.run())
        await victim.started_and_blocked()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        victim.assert_killed_before_the_exception_propagated()
        await victim.assert_pool_still_usable()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_move_on_after_kills_the_worker(tmp_path) -> None:
    async def expire_when_blocked(scope: trio.CancelScope) -> None:
        await victim.started_and_blocked()
        scope.deadline = trio.current_time()

    async with new_pool() as pool:
        victim = ChannelVictim(pool, tmp_path)
        with trio.move_on_after(60) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(expire_when_blocked, scope)
                await victim.run()
        assert scope.cancelled_caught
        victim.assert_killed_before_the_exception_propagated()
        await victim.assert_pool_still_usable()


# --- backpressure ----------------------------------------------------------------------------


async def test_a_function_sending_forever_stays_within_buffer_of_the_items_received(
    tmp_path,
) -> None:
    buffer = 4
    async with new_pool() as pool:
        for kind in KINDS:
            log = tmp_path / f"{kind}.log"
            received = 0
            async with pool.with_options(buffer=buffer).open_channel(
                channel_function("send_forever_logging", kind), log
            ) as channel:
                async for item in channel:
                    assert item == received
                    received += 1
                    assert items_logged(log) <= received + buffer, kind
                    if received == 10:
                        break
                # While the parent pauses, the function runs up to the bound and no further.
                sent = await settled_item_count(log)
                assert received <= sent <= received + buffer, kind
            # Closing made its pending send raise BrokenPipeError; it then returned.
            assert lines_of(log)[-1] == "BrokenPipeError", kind
            assert_no_call_running(pool)


async def test_send_waits_once_a_function_that_never_receives_has_buffer_items(
    tmp_path,
) -> None:
    buffer = 4
    pid_path = tmp_path / "pid"
    async with new_pool(kill_grace=SHORT_GRACE) as pool:
        async with pool.with_options(buffer=buffer).open_channel(
            workers.channel_write_pid_and_sleep, pid_path, 60
        ) as channel:
            pid = await read_pid(pid_path)
            for item in range(buffer):
                with anyio.fail_after(5):
                    await channel.send(item)
            with anyio.move_on_after(0.1) as scope:
                await channel.send(buffer)
            assert scope.cancelled_caught, f"send number {buffer + 1} did not wait"
        # The function never returns: leaving the block killed it after kill_grace.
        assert gone(pid)
        assert_no_call_running(pool)
        assert await pool.run(workers.square, 3) == 9


async def test_leaving_by_a_cancellation_while_send_waits_kills_the_worker(tmp_path) -> None:
    pid_path = tmp_path / "pid"
    pid = None
    async with new_pool() as pool:
        with anyio.move_on_after(60) as scope:
            async with pool.with_options(buffer=2).open_channel(
                workers.channel_write_pid_and_sleep, pid_path, 60
            ) as channel:
                pid = await read_pid(pid_path)
                await channel.send(0)
                await channel.send(1)
                scope.deadline = anyio.current_time() + 0.1
                await channel.send(2)
        assert scope.cancelled_caught
        assert pid is not None
        assert gone(pid)
        assert_no_call_running(pool)
        assert await pool.run(workers.square, 3) == 9


# --- stats -----------------------------------------------------------------------------------


async def test_a_channel_counts_as_one_call_running_until_its_end(tmp_path) -> None:
    async with new_pool() as pool:
        async with pool.open_channel(workers.channel_echo) as channel:
            await channel.send(1)
            assert await channel.receive() == 1
            running = pool.stats()
            await channel.send_eof()
        completed = pool.stats()

        with pytest.raises(ValueError, match="boom"):
            async with pool.open_channel(workers.channel_raise, "boom") as channel:
                await channel.result()
        failed = pool.stats()

        with anyio.move_on_after(60) as scope:
            async with pool.open_channel(
                workers.channel_write_pid_and_sleep, tmp_path / "pid", 60
            ) as channel:
                await read_pid(tmp_path / "pid")
                scope.cancel()
                await channel.receive()
        cancelled = pool.stats()

    assert (running.calls_running, running.workers_busy) == (1, 1)
    assert (completed.calls_running, completed.calls_completed, completed.workers_busy) == (
        0,
        1,
        0,
    )
    assert (failed.calls_running, failed.calls_failed) == (0, 1)
    assert (cancelled.calls_running, cancelled.calls_cancelled) == (0, 1)
    assert cancelled.workers_busy == 0
    assert cancelled.workers_replaced == 1
