"""anypool.Queue: a queue in the parent that calls running in workers put to and get from.

The parent awaits ``put``/``get``; a call that receives the queue as an argument gets a handle
with blocking ``put``/``get`` (as multiprocessing.Queue), which the parent serves over the
worker's own pipe. A worker blocked on the queue can be cancelled (killed) without breaking
the queue, or, with ``kill_on_cancel=False``, left to finish while the parent keeps serving it.

Files, not timing, coordinate the worker with the test: a worker writes its pid, or writes how
many puts returned so far.
"""

from __future__ import annotations

import functools
import queue
import re
import threading
from pathlib import Path

import anyio
import pytest

import anypool
import workers
from anypool.backends import Feature
from support import contract_pool, gone, read_pid, stays_true, wait_until_async

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    pytest.mark.needs(Feature.QUEUE),
    pytest.mark.anyio,
    # A queue that hangs fails in seconds rather than after the suite's default timeout.
    pytest.mark.timeout(30),
]

KILL_GRACE = 0.5


# --- helpers ---------------------------------------------------------------------------------


def new_pool(max_workers: int = 1) -> anypool.Pool:
    return contract_pool(max_workers, kill_grace=KILL_GRACE)


def drain_nowait(q: anypool.Queue) -> list[object]:
    """Every item in ``q`` now, without waiting."""
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except (queue.Empty, anyio.EndOfStream):
            return items


def progress_of(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def waiting_getters(q: anypool.Queue) -> int:
    """How many gets (a worker's, served by the parent) wait on ``q`` now. (Private state: no
    public API tells that a worker's get has reached the parent.)"""
    return q._receive.statistics().tasks_waiting_receive


def assert_no_call_running(pool: anypool.Pool) -> None:
    stats = pool.stats()
    assert stats.calls_running == 0, stats
    assert stats.workers_busy == 0, stats


# --- in the parent ---------------------------------------------------------------------------


async def test_sizes_fifo_order_and_the_nowait_forms() -> None:
    # Unbounded: any number of items, in FIFO order.
    for q in (anypool.Queue(), anypool.Queue(0), anypool.Queue(-1)):
        assert q.maxsize <= 0
        assert q.empty()
        assert q.qsize() == 0
        for item in range(1000):
            q.put_nowait(item)
        await q.put("awaited")
        assert not q.full()
        assert not q.empty()
        assert q.qsize() == 1001
        assert [q.get_nowait() for _ in range(1000)] == list(range(1000))
        assert await q.get() == "awaited"
        assert q.empty()
        with pytest.raises(queue.Empty):
            q.get_nowait()

    # Bounded: put_nowait raises queue.Full once maxsize items are in.
    bounded: anypool.Queue[int] = anypool.Queue(2)
    assert bounded.maxsize == 2
    bounded.put_nowait(1)
    assert not bounded.full()
    await bounded.put(2)
    assert bounded.full()
    assert bounded.qsize() == 2
    with pytest.raises(queue.Full):
        bounded.put_nowait(3)
    assert bounded.get_nowait() == 1
    assert not bounded.full()
    bounded.put_nowait(3)
    assert [bounded.get_nowait(), await bounded.get()] == [2, 3]
    with pytest.raises(queue.Empty):
        bounded.get_nowait()


async def test_an_unpicklable_item_raises_serialization_error_at_put_in_the_parent() -> None:
    q: anypool.Queue[object] = anypool.Queue()
    with pytest.raises(anypool.SerializationError, match=re.escape("_thread.lock")):
        await q.put(threading.Lock())
    with pytest.raises(anypool.SerializationError, match=re.escape("_thread.lock")):
        q.put_nowait(threading.Lock())
    assert q.empty()
    await q.put("fine")
    assert q.get_nowait() == "fine"


async def test_put_waits_for_room_and_get_waits_for_an_item_until_close() -> None:
    q: anypool.Queue[str] = anypool.Queue(1)
    done: list[str] = []

    async def put_second() -> None:
        await q.put("second")
        done.append("put")

    async def get_one() -> None:
        try:
            done.append(await q.get())
        except anyio.EndOfStream:
            done.append("EndOfStream")

    await q.put("first")
    async with anyio.create_task_group() as group:
        group.start_soon(put_second)
        await anyio.wait_all_tasks_blocked()
        assert done == [], "put did not wait for room"
        assert await q.get() == "first"
    assert done == ["put"]
    assert q.get_nowait() == "second"

    async with anyio.create_task_group() as group:
        group.start_soon(get_one)
        await anyio.wait_all_tasks_blocked()
        assert done == ["put"], "get did not wait for an item"
        await q.put("third")
    assert done == ["put", "third"]

    # close() ends a get that waits.
    async with anyio.create_task_group() as group:
        group.start_soon(get_one)
        await anyio.wait_all_tasks_blocked()
        q.close()
    assert done == ["put", "third", "EndOfStream"]


async def test_close_refuses_puts_and_lets_gets_take_the_remaining_items() -> None:
    q: anypool.Queue[int] = anypool.Queue(5)
    await q.put(1)
    q.put_nowait(2)
    q.put_nowait(3)
    q.close()
    q.close()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await q.put(4)
    with pytest.raises(anyio.ClosedResourceError):
        q.put_nowait(4)
    assert q.qsize() == 3
    assert await q.get() == 1
    assert q.get_nowait() == 2
    # async for takes the rest and ends once the queue is closed and empty.
    assert [item async for item in q] == [3]
    assert [item async for item in q] == []
    with pytest.raises(anyio.EndOfStream):
        await q.get()
    with pytest.raises(anyio.EndOfStream):
        q.get_nowait()


# --- with workers ----------------------------------------------------------------------------


async def test_a_worker_puts_for_the_parent_and_the_parent_puts_for_a_worker() -> None:
    q: anypool.Queue[object] = anypool.Queue()
    async with new_pool() as pool:
        assert await pool.run(workers.queue_put_items, q, [1, "two", (3,)]) == 3
        assert q.qsize() == 3
        assert await q.get() == 1
        assert q.get_nowait() == "two"
        assert await q.get() == (3,)
        assert q.empty()

        for item in range(3):
            await q.put(item)
        q.close()
        assert await pool.run(workers.queue_get_until_eof, q) == ([0, 1, 2], "EOFError")
        # Closed and empty: iteration in the worker ends at once.
        assert await pool.run(workers.queue_iterate, q) == []
        assert_no_call_running(pool)


async def test_the_parent_iterates_while_a_worker_puts_until_it_closes_the_queue() -> None:
    q: anypool.Queue[int] = anypool.Queue(3)
    received: list[int] = []

    async def produce() -> None:
        assert await pool.run(workers.queue_put_items, q, list(range(20))) == 20
        q.close()

    async with new_pool() as pool, anyio.create_task_group() as group:
        group.start_soon(produce)
        async for item in q:
            received.append(item)
    assert received == list(range(20))


async def test_a_worker_iterating_gets_what_the_parent_puts_while_it_waits() -> None:
    q: anypool.Queue[int] = anypool.Queue()
    result: list[list[int]] = []

    async def consume() -> None:
        result.append(await pool.run(workers.queue_iterate, q))

    async with new_pool() as pool:
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            for item in range(5):
                await q.put(item)
            q.close()
        assert result == [list(range(5))]


async def test_workers_putting_into_a_full_queue_wait_until_the_parent_gets(tmp_path) -> None:
    q: anypool.Queue[int] = anypool.Queue(2)
    pid_path, progress = tmp_path / "pid", tmp_path / "progress"
    received: list[int] = []
    async with new_pool() as pool, anyio.create_task_group() as group:
        fn = workers.queue_put_items_noting_progress
        group.start_soon(pool.run, fn, q, list(range(10)), pid_path, progress)
        assert await wait_until_async(lambda: progress_of(progress) >= 2)
        # The queue is full: the worker's third put waits for the parent.
        assert await stays_true(lambda: progress_of(progress) <= 3, 0.2)
        assert 2 <= progress_of(progress) <= 3
        assert q.full()
        for _ in range(10):
            received.append(await q.get())
    assert received == list(range(10))
    assert progress_of(progress) == 10


async def test_one_worker_produces_while_another_consumes_through_the_queue() -> None:
    q: anypool.Queue[int] = anypool.Queue(3)
    consumed: list[list[int]] = []

    async def consume() -> None:
        consumed.append(await pool.run(workers.queue_iterate, q))

    async with new_pool(2) as pool:
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            assert await pool.run(workers.queue_put_items, q, list(range(30))) == 30
            # Workers cannot close the queue; the parent does once the producer returned.
            q.close()
        assert consumed == [list(range(30))]
        assert_no_call_running(pool)


async def test_worker_nowait_forms_and_a_closed_queue_raise() -> None:
    q: anypool.Queue[int] = anypool.Queue(1)
    async with new_pool() as pool:
        with pytest.raises(queue.Empty):
            await pool.run(workers.queue_get_nowait, q)
        await pool.run(workers.queue_put_nowait, q, 0)
        with pytest.raises(queue.Full):
            await pool.run(workers.queue_put_nowait, q, 1)
        assert await pool.run(workers.queue_get_nowait, q) == 0
        assert q.empty()

        q.put_nowait(7)
        q.close()
        with pytest.raises(ValueError, match="closed") as info:
            await pool.run(workers.queue_put, q, 1)
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)
        # Closed: get returns what remains, then raises EOFError.
        assert await pool.run(workers.queue_get, q) == 7
        with pytest.raises(EOFError):
            await pool.run(workers.queue_get, q)
        assert_no_call_running(pool)


async def test_worker_get_and_put_with_a_timeout_raise_after_the_timeout() -> None:
    q: anypool.Queue[int] = anypool.Queue(1)
    async with new_pool() as pool:
        outcome, waited = await pool.run(workers.queue_get_with_timeout, q, 0.2)
        assert outcome == "Empty"
        assert 0.18 <= waited < 3

        q.put_nowait(5)
        outcome, waited = await pool.run(workers.queue_put_with_timeout, q, 6, 0.2)
        assert outcome == "Full"
        assert 0.18 <= waited < 3

        # An item there: get(timeout=...) returns it without waiting for the timeout.
        outcome, waited = await pool.run(workers.queue_get_with_timeout, q, 10.0)
        assert outcome == "5"
        assert waited < 3
        assert q.empty()


async def test_the_worker_handle_is_refused_elsewhere_and_refuses_unpicklable_items() -> None:
    q: anypool.Queue[object] = anypool.Queue()
    q.put_nowait("stays")
    async with new_pool() as pool:
        pid = await pool.run(workers.current_pid)
        # It cannot be passed on from the worker.
        with pytest.raises(TypeError, match="cannot be passed on"):
            await pool.run(workers.queue_pickle_handle, q)
        # Other threads of the worker cannot use it.
        errors = await pool.run(workers.queue_use_from_another_thread, q)
        assert len(errors) == 2
        assert all(error.startswith("RuntimeError: ") for error in errors), errors
        # An unpicklable item put in the worker raises there, and so in the caller.
        with pytest.raises(anypool.SerializationError, match=re.escape("_thread.lock")) as info:
            await pool.run(workers.queue_put_a_lock, q)
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)
        # The worker is kept; the queue is as it was.
        assert await pool.run(workers.current_pid) == pid
    assert drain_nowait(q) == ["stays"]


# --- in map, stream and channels -------------------------------------------------------------


async def test_a_map_function_puts_a_side_result_per_item() -> None:
    q: anypool.Queue[int] = anypool.Queue()
    async with new_pool(2) as pool:
        fn = functools.partial(workers.queue_put_side_result, q)
        results = [result async for result in pool.map(fn, range(8))]
    assert results == [item * item for item in range(8)]
    assert sorted(drain_nowait(q)) == [item * 10 for item in range(8)]


async def test_a_stream_generator_puts_as_it_yields_and_yields_what_it_gets() -> None:
    side: anypool.Queue[int] = anypool.Queue()
    feed: anypool.Queue[int] = anypool.Queue(1)

    async def put_then_close() -> None:
        for item in range(10):
            await feed.put(item)
        feed.close()

    async with new_pool() as pool:
        items = [item async for item in pool.stream(workers.queue_yield_and_put, side, 5)]
        assert items == list(range(5))
        assert drain_nowait(side) == [item * 10 for item in range(5)]

        async with anyio.create_task_group() as group:
            group.start_soon(put_then_close)
            items = [item async for item in pool.stream(workers.queue_yield_doubled, feed)]
        assert items == [item * 2 for item in range(10)]
        assert_no_call_running(pool)


async def test_a_channel_function_puts_what_it_receives() -> None:
    q: anypool.Queue[int] = anypool.Queue()
    async with new_pool() as pool:
        async with pool.open_channel(workers.channel_items_to_queue, q) as channel:
            for item in range(3):
                await channel.send(item)
            await channel.send_eof()
            assert await channel.result() == "done"
        assert_no_call_running(pool)
    assert drain_nowait(q) == [0, 1, 2]


async def test_a_channel_functions_put_is_served_while_the_parent_waits_on_the_queue() -> None:
    """The parent sends an item, then awaits the queue (it does not receive from the channel):
    the worker's put must still be served."""
    q: anypool.Queue[int] = anypool.Queue()
    async with (
        new_pool() as pool,
        pool.open_channel(workers.channel_items_to_queue, q) as channel,
    ):
        await channel.send(42)
        with anyio.fail_after(2):
            assert await q.get() == 42
        await channel.send_eof()
        assert await channel.result() == "done"


# --- cancellation ----------------------------------------------------------------------------


async def test_cancelling_a_call_blocked_in_put_kills_the_worker_and_keeps_the_queue(
    tmp_path,
) -> None:
    q: anypool.Queue[object] = anypool.Queue(2)
    pid_path, progress = tmp_path / "pid", tmp_path / "progress"
    async with new_pool() as pool:
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    pool.run,
                    workers.queue_put_items_noting_progress,
                    q,
                    list(range(10)),
                    pid_path,
                    progress,
                )
                pid = await read_pid(pid_path)
                assert await wait_until_async(lambda: progress_of(progress) == 2)
                # The third put waits for room.
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        assert gone(pid)
        assert_no_call_running(pool)
        assert pool.stats().calls_cancelled == 1
        # What was put stays; what was being put is not there; nothing is duplicated.
        assert q.qsize() == 2
        assert drain_nowait(q) == [0, 1]
        # Still usable, by the parent and by workers.
        await q.put("parent")
        assert await pool.run(workers.queue_get, q) == "parent"
        await pool.run(workers.queue_put, q, "worker")
        assert drain_nowait(q) == ["worker"]


async def test_cancelling_a_call_blocked_in_get_kills_the_worker_and_loses_no_item(
    tmp_path,
) -> None:
    q: anypool.Queue[object] = anypool.Queue()
    pid_path, note = tmp_path / "pid", tmp_path / "note"
    async with new_pool() as pool:
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.run, workers.queue_get_noting, q, pid_path, note)
                pid = await read_pid(pid_path)
                # The worker's get reached the parent and waits there.
                assert await wait_until_async(lambda: waiting_getters(q) == 1)
                scope.cancel()
        assert scope.cancelled_caught
        assert gone(pid)
        assert waiting_getters(q) == 0
        assert_no_call_running(pool)
        # The killed worker's get does not take the next item.
        await q.put("next")
        assert q.qsize() == 1
        assert not note.exists()
        assert await pool.run(workers.queue_get, q) == "next"
        assert q.empty()


async def test_without_kill_on_cancel_a_pending_put_completes_when_the_parent_gets(
    tmp_path,
) -> None:
    q: anypool.Queue[int] = anypool.Queue(1)
    pid_path, progress = tmp_path / "pid", tmp_path / "progress"
    async with new_pool() as pool:
        patient = pool.with_options(kill_on_cancel=False)
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    patient.run,
                    workers.queue_put_items_noting_progress,
                    q,
                    [0, 1, 2],
                    pid_path,
                    progress,
                )
                pid = await read_pid(pid_path)
                assert await wait_until_async(lambda: progress_of(progress) == 1)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        assert not gone(pid)
        # The abandoned call goes on in the background, its puts served as the parent gets.
        with anyio.fail_after(10):
            assert [await q.get() for _ in range(3)] == [0, 1, 2]
            assert await wait_until_async(lambda: progress_of(progress) == 3)
            # Its worker is reused once the call is over.
            assert await pool.run(workers.current_pid) == pid
        assert q.empty()
        stats = pool.stats()
        assert (stats.calls_cancelled, stats.workers_replaced) == (1, 0)


async def test_without_kill_on_cancel_a_pending_get_takes_what_the_parent_puts_later(
    tmp_path,
) -> None:
    q: anypool.Queue[str] = anypool.Queue()
    pid_path, note = tmp_path / "pid", tmp_path / "note"
    async with new_pool() as pool:
        patient = pool.with_options(kill_on_cancel=False)
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(patient.run, workers.queue_get_noting, q, pid_path, note)
                pid = await read_pid(pid_path)
                assert await wait_until_async(lambda: waiting_getters(q) == 1)
                scope.cancel()
        assert scope.cancelled_caught
        await q.put("late")
        with anyio.fail_after(10):
            assert await wait_until_async(note.exists)
            assert await pool.run(workers.current_pid) == pid
        assert note.read_text() == "'late'"
        assert q.empty()
