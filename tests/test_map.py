"""pool.map: results in input order or as chunks finish, input taken lazily and never more than
max_in_flight ahead of the consumer, errors raised or yielded in place, and the work in flight
killed when the consumer stops early.

Files, not timing, order the workers: an item that must finish last waits for a file that only
the test or another item creates. An item that must be killed waits for a file nobody creates.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import re
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import anyio
import psutil
import pytest

import anypool
import workers
from anypool._map import AUTO_CHUNK_LIMIT
from support import (
    contract,
    contract_pool,
    dead,
    gone,
    killed,
    read_pid,
    stays_true,
    wait_until_async,
)

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    pytest.mark.anyio,
    # A map that hangs fails in seconds rather than after the suite's default timeout.
    pytest.mark.timeout(30),
]

MIB = 1 << 20


# --- helpers ---------------------------------------------------------------------------------


async def collect(results: anypool.MapResults) -> list[object]:
    return [result async for result in results]


async def collect_into(received: list[object], results: anypool.MapResults) -> None:
    """Append each result to ``received``, so that what came before an exception stays seen."""
    async for result in results:
        received.append(result)


async def consume_in_async_with(results: anypool.MapResults) -> None:
    async with results as entered:
        async for _ in entered:
            pass


async def asynchronously(items: Iterable[object]) -> AsyncIterator[object]:
    for item in items:
        await anyio.sleep(0)
        yield item


def source_of(items: list[object], kind: str) -> object:
    """``items`` as a generator (``kind == "sync"``) or an async generator (``"async"``)."""
    if kind == "sync":
        return (item for item in items)
    return asynchronously(items)


class CountingSource:
    """An endless input, 0, 1, 2, ..., that counts the items map has taken from it."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[int]:
        for item in itertools.count():
            self.taken += 1
            yield item


class LongItem:
    """An item for ``workers.apply`` whose call writes its worker's pid and then waits for a file
    nobody creates: it ends before 30 s only if its worker is killed."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.pid_file = tmp_path / f"{name}.pid"
        self.call = (workers.write_pid_and_wait_for, self.pid_file, tmp_path / "never")

    async def started(self) -> int:
        """Wait until a worker runs the item; its pid."""
        return await read_pid(self.pid_file)


class SourceError(Exception):
    """Raised by an input iterable, not by a worker."""


# --- results ---------------------------------------------------------------------------------


async def test_map_returns_map_results_without_being_awaited() -> None:
    async with contract_pool(2) as pool:
        results = pool.map(workers.square, [1, 2, 3])
        assert isinstance(results, anypool.MapResults)
        await results.aclose()


async def test_map_takes_no_input_before_iteration_starts() -> None:
    source = CountingSource()
    async with contract_pool(2) as pool:
        results = pool.map(workers.square, source)
        assert await stays_true(lambda: source.taken == 0, 0.1)
        await results.aclose()
    assert source.taken == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("chunksize", [1, 3, "auto"])
async def test_ordered_results_equal_the_function_applied_to_each_item(
    chunksize: int | str, kind: str
) -> None:
    items = list(range(20))
    async with contract_pool(2) as pool:
        results = await collect(
            pool.map(workers.square, source_of(items, kind), chunksize=chunksize)
        )
    assert results == [workers.square(item) for item in items]


async def test_results_come_in_input_order_when_a_later_item_finishes_first(tmp_path) -> None:
    # The first item can only finish after the second one has.
    marker = tmp_path / "second-finished"
    items = [
        (workers.return_when_path_exists, marker, "first"),
        (workers.touch_and_return, marker, "second"),
    ]
    async with contract_pool(2) as pool:
        assert await collect(pool.map(workers.apply, items)) == ["first", "second"]


async def test_map_inside_async_with_yields_every_result() -> None:
    async with contract_pool(2) as pool, pool.map(workers.square, range(10)) as results:
        assert await collect(results) == [item * item for item in range(10)]


async def test_map_accepts_a_lambda() -> None:
    async with contract_pool(2) as pool:
        results = await collect(pool.map(lambda x: 3 * x + 1, range(10), chunksize=3))
    assert results == [3 * x + 1 for x in range(10)]


async def test_map_accepts_an_async_closure() -> None:
    offset = 100

    async def shift(x: int) -> int:
        return x + offset

    async with contract_pool(2) as pool:
        assert await collect(pool.map(shift, range(5))) == [100, 101, 102, 103, 104]


async def test_map_over_an_empty_iterable_yields_nothing() -> None:
    async with contract_pool(2) as pool:
        assert await collect(pool.map(workers.square, [])) == []


async def test_auto_chunksize_gives_the_same_results_for_many_tiny_items() -> None:
    async with contract_pool(2) as pool:
        results = await collect(pool.map(lambda x: x + 1, range(5000), chunksize="auto"))
    assert results == list(range(1, 5001))


async def test_map_results_are_iterated_only_once() -> None:
    async with contract_pool(2) as pool:
        results = pool.map(workers.square, [1, 2, 3])
        assert await collect(results) == [1, 4, 9]
        second_pass: list[object] = []
        # Whether a second pass raises or ends at once, it yields nothing again.
        with contextlib.suppress(Exception):
            second_pass = await collect(results)
        assert second_pass == []


@pytest.mark.parametrize("chunksize", [1, 3, "auto"])
async def test_unordered_results_are_the_same_multiset(chunksize: int | str) -> None:
    items = [5, -3, 2, 5, 0, 7, -3, 1, 4, 2, 9, 6]
    async with contract_pool(2) as pool:
        results = await collect(pool.map(workers.square, items, ordered=False, chunksize=chunksize))
    assert sorted(results) == sorted(workers.square(item) for item in items)


@pytest.mark.parametrize(
    ("chunksize", "names"),
    [(1, ["slow", "fast"]), (2, ["slow", "with slow", "fast", "with fast"])],
)
async def test_unordered_yields_a_fast_chunk_before_an_earlier_slow_one(
    tmp_path, chunksize: int, names: list[str]
) -> None:
    # The slow item waits for a file the test creates once it has received the fast item: the
    # slow one can only finish if the fast one, in a later chunk, is yielded first.
    release = tmp_path / "release"
    items = [
        (workers.return_when_path_exists, release, name)
        if name == "slow"
        else (workers.identity, name)
        for name in names
    ]
    received: list[object] = []
    async with (
        contract_pool(2) as pool,
        pool.map(workers.apply, items, ordered=False, chunksize=chunksize) as results,
    ):
        async for name in results:
            received.append(name)
            if name == "fast":
                release.touch()
    assert received.index("fast") < received.index("slow")
    assert sorted(received) == sorted(names)


# --- lazy, bounded input ---------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, "auto"])
async def test_items_taken_never_exceed_results_handed_out_plus_max_in_flight(
    chunksize: int | str,
) -> None:
    max_in_flight = 5
    source = CountingSource()
    received = 0
    async with (
        contract_pool(2) as pool,
        pool.map(
            workers.square, source, chunksize=chunksize, max_in_flight=max_in_flight
        ) as results,
    ):
        async for _ in results:
            received += 1
            assert source.taken <= received + max_in_flight
            if received == 12:
                break
        # While the consumer pauses, the input is taken a chunk at a time up to the bound, and
        # no further.
        bound = received + max_in_flight
        chunk = min(AUTO_CHUNK_LIMIT if chunksize == "auto" else int(chunksize), max_in_flight)
        assert await wait_until_async(lambda: source.taken > bound - chunk)
        assert await stays_true(lambda: bound - chunk < source.taken <= bound, 0.2)


@pytest.mark.parametrize(
    ("chunksize", "default_max_in_flight"), [(1, 6), (3, 18), ("auto", 6 * AUTO_CHUNK_LIMIT)]
)
async def test_default_max_in_flight_is_three_chunks_per_worker(
    chunksize: int | str, default_max_in_flight: int
) -> None:
    # 2 workers: 3 * 2 * chunksize items; for "auto", of the largest chunk, which tiny
    # functions reach.
    source = CountingSource()
    received = 0
    async with (
        contract_pool(2) as pool,
        pool.map(workers.square, source, chunksize=chunksize) as results,
    ):
        async for _ in results:
            received += 1
            assert source.taken <= received + default_max_in_flight
            if received == 12:
                break
        bound = received + default_max_in_flight
        chunk = AUTO_CHUNK_LIMIT if chunksize == "auto" else int(chunksize)
        assert await wait_until_async(lambda: source.taken > bound - chunk)
        assert await stays_true(lambda: bound - chunk < source.taken <= bound, 0.2)


@pytest.mark.parametrize("chunksize", [1, "auto"])
async def test_map_over_an_endless_input_of_large_items_runs_in_bounded_memory(
    chunksize: int | str,
) -> None:
    # On Ray, an argument of over 100 KiB goes through its object store, mapped into this
    # process: the pages written stay resident, reused for the next objects. More items pass
    # there, against a bound that still holds well under what went through.
    consumed, allowance = (200, 100 * MIB) if contract().owns_workers else (600, 250 * MIB)
    taken = 0

    def megabyte_items() -> Iterator[bytes]:
        nonlocal taken
        while True:
            taken += 1
            # Stop a runaway map before it takes the machine's memory.
            assert taken <= 5 * consumed, "map took far more input than it handed out"
            # Every page written, so that holding the item costs resident memory.
            yield b"x" * MIB

    process = psutil.Process()
    async with contract_pool(2) as pool:
        baseline = peak = process.memory_info().rss
        # "auto" sizes chunks by bytes too: a fast function of large items gets small chunks.
        async with pool.map(len, megabyte_items(), chunksize=chunksize) as results:
            received = 0
            async for size in results:
                assert size == MIB
                peak = max(peak, process.memory_info().rss)
                received += 1
                if received == consumed:
                    break
    assert peak - baseline < allowance


async def test_max_in_flight_smaller_than_chunksize_still_yields_every_result() -> None:
    async with contract_pool(2) as pool:
        with anyio.fail_after(10):
            results = await collect(
                pool.map(workers.square, range(10), chunksize=4, max_in_flight=2)
            )
    assert results == [item * item for item in range(10)]


# --- exceptions ------------------------------------------------------------------------------


async def test_exception_is_raised_after_the_results_of_the_items_before_it() -> None:
    received: list[object] = []
    async with contract_pool(2) as pool:
        results = pool.map(workers.square_unless_negative, [0, 1, 2, 3, -4, 5, 6])
        with pytest.raises(ValueError, match=r"^negative item -4$") as info:
            await collect_into(received, results)
        assert received == [0, 1, 4, 9]
        assert type(info.value) is ValueError
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)
        assert "square_unless_negative" in str(info.value.__cause__)
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


async def test_exception_kills_the_workers_running_other_items(tmp_path) -> None:
    sibling = LongItem(tmp_path, "sibling")
    # The failing item raises once its sibling is running on the other worker.
    items = [
        (workers.raise_value_error_when_path_exists, sibling.pid_file, "bad item"),
        sibling.call,
    ]
    async with contract_pool(2) as pool:
        with pytest.raises(ValueError, match="bad item"):
            await consume_in_async_with(pool.map(workers.apply, items))
        assert await killed(await sibling.started())
        assert await pool.run(workers.square, 3) == 9


async def test_exception_in_a_bare_async_for_kills_the_workers_running_other_items(
    tmp_path,
) -> None:
    sibling = LongItem(tmp_path, "sibling")
    items = [
        (workers.raise_value_error_when_path_exists, sibling.pid_file, "bad item"),
        sibling.call,
    ]
    async with contract_pool(2) as pool:
        with pytest.raises(ValueError, match="bad item"):
            async for _ in pool.map(workers.apply, items):
                pass
        pid = await sibling.started()
        assert await wait_until_async(lambda: gone(pid))
        assert await pool.run(workers.square, 3) == 9


async def test_return_exceptions_yields_each_exception_in_its_items_place() -> None:
    async with contract_pool(2) as pool:
        results = await collect(
            pool.map(workers.square_unless_negative, [1, -2, 3, -4, 5], return_exceptions=True)
        )
    assert [results[0], results[2], results[4]] == [1, 9, 25]
    for error, item in [(results[1], -2), (results[3], -4)]:
        assert type(error) is ValueError
        assert error.args == (f"negative item {item}",)
        assert isinstance(error.__cause__, anypool.RemoteTraceback)


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_exception_from_the_input_is_raised_after_the_results_of_the_items_before_it(
    kind: str, ordered: bool
) -> None:
    def failing_items() -> Iterator[int]:
        yield from [1, 2, 3]
        raise SourceError("the input broke")

    async def failing_async_items() -> AsyncIterator[int]:
        for item in [1, 2, 3]:
            yield item
        raise SourceError("the input broke")

    source = failing_items() if kind == "sync" else failing_async_items()
    received: list[object] = []
    async with contract_pool(2) as pool:
        with pytest.raises(SourceError, match="the input broke"):
            await collect_into(received, pool.map(workers.square, source, ordered=ordered))
        assert await pool.run(workers.square, 3) == 9
    assert sorted(received) == [1, 4, 9]


async def test_worker_dying_raises_broken_worker_error_after_the_results_before_it() -> None:
    items = [
        (workers.identity, "before"),
        (workers.exit_immediately, 3),
        (workers.identity, "after"),
    ]
    received: list[object] = []
    async with contract_pool(2) as pool:
        with pytest.raises(anypool.BrokenWorkerError) as info:
            await collect_into(received, pool.map(workers.apply, items))
        assert received == ["before"]
        if contract().reports_exits:
            assert info.value.exitcode == 3
            assert gone(info.value.pid)
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


async def test_worker_dying_with_return_exceptions_fails_every_item_of_its_chunk() -> None:
    # Chunks of 3: the worker running the first chunk dies on its last item.
    items = [
        (workers.identity, 0),
        (workers.identity, 1),
        (workers.exit_immediately, 3),
        (workers.identity, 3),
        (workers.identity, 4),
        (workers.identity, 5),
    ]
    async with contract_pool(2) as pool:
        results = await collect(pool.map(workers.apply, items, chunksize=3, return_exceptions=True))
        assert await pool.run(workers.square, 3) == 9
    assert all(isinstance(error, anypool.BrokenWorkerError) for error in results[:3])
    if contract().reports_exits:
        assert [error.exitcode for error in results[:3]] == [3, 3, 3]
    assert results[3:] == [3, 4, 5]


# --- stopping early --------------------------------------------------------------------------


async def test_breaking_out_of_async_with_kills_the_workers_running_items(tmp_path) -> None:
    first, second = LongItem(tmp_path, "first"), LongItem(tmp_path, "second")
    items = [(workers.identity, "done"), first.call, second.call]
    # A worker for each item: chunks need not start in input order, and none may wait
    # for a worker behind a long item.
    async with contract_pool(3) as pool:
        async with pool.map(workers.apply, items) as results:
            async for _ in results:
                pids = [await first.started(), await second.started()]
                break
        assert await killed(pids[0])
        assert await killed(pids[1])
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


async def test_exception_in_the_consumer_propagates_and_kills_the_workers_running_items(
    tmp_path,
) -> None:
    class ConsumerError(Exception):
        pass

    first, second = LongItem(tmp_path, "first"), LongItem(tmp_path, "second")
    items = [(workers.identity, "done"), first.call, second.call]
    pids: list[int] = []

    async def consume_then_fail() -> None:
        async with pool.map(workers.apply, items) as results:
            async for _ in results:
                pids.extend([await first.started(), await second.started()])
                raise ConsumerError

    # A worker for each item: chunks need not start in input order, and none may wait
    # for a worker behind a long item.
    async with contract_pool(3) as pool:
        with pytest.raises(ConsumerError):
            await consume_then_fail()
        assert await killed(pids[0])
        assert await killed(pids[1])
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


async def test_a_loop_left_early_loses_no_result_to_the_next_loop_or_anext() -> None:
    # `async for` iterates a generator of its own each time; every way of taking results
    # goes on from the last result handed out, in order, within a chunk and across chunks.
    taken = []
    async with (
        contract_pool(2) as pool,
        pool.map(workers.square, range(60), chunksize=7) as results,
    ):
        for stop in (3, 10, 25):
            async for result in results:
                taken.append(result)
                if len(taken) == stop:
                    break
            taken.append(await anext(results))
        taken += await collect(results)
    assert taken == [x * x for x in range(60)]


async def test_leaving_async_with_early_takes_no_more_input() -> None:
    source = CountingSource()
    async with contract_pool(2) as pool:
        async with pool.map(workers.square, source) as results:
            async for result in results:
                if result == 9:
                    break
        taken = source.taken
        assert await stays_true(lambda: source.taken == taken, 0.2)


async def test_cancelling_the_consumer_while_it_waits_kills_the_workers_running_items(
    tmp_path,
) -> None:
    first, second = LongItem(tmp_path, "first"), LongItem(tmp_path, "second")
    pids: list[int] = []

    async def expire_when_started(scope: anyio.CancelScope) -> None:
        pids.extend([await first.started(), await second.started()])
        scope.deadline = anyio.current_time()

    async with contract_pool(2) as pool:
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(expire_when_started, scope)
                async with pool.map(workers.apply, [first.call, second.call]) as results:
                    async for _ in results:
                        raise AssertionError("an item that waits forever returned")
        assert scope.cancelled_caught
        assert await killed(pids[0])
        assert await killed(pids[1])
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


async def test_cancelling_the_consumer_in_its_loop_body_kills_the_workers_running_items(
    tmp_path,
) -> None:
    first, second = LongItem(tmp_path, "first"), LongItem(tmp_path, "second")
    items = [(workers.identity, "done"), first.call, second.call]
    # A worker for each item: chunks need not start in input order, and none may wait
    # for a worker behind a long item.
    async with contract_pool(3) as pool:
        with anyio.move_on_after(60) as scope:
            async with pool.map(workers.apply, items) as results:
                async for _ in results:
                    pids = [await first.started(), await second.started()]
                    scope.cancel()
                    await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert await killed(pids[0])
        assert await killed(pids[1])
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


async def test_aclose_after_leaving_a_bare_async_for_kills_the_workers_running_items(
    tmp_path,
) -> None:
    first, second = LongItem(tmp_path, "first"), LongItem(tmp_path, "second")
    items = [(workers.identity, "done"), first.call, second.call]
    # A worker for each item: chunks need not start in input order, and none may wait
    # for a worker behind a long item.
    async with contract_pool(3) as pool:
        results = pool.map(workers.apply, items)
        async for _ in results:
            pids = [await first.started(), await second.started()]
            break
        await results.aclose()
        assert await killed(pids[0])
        assert await killed(pids[1])
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


async def test_map_results_dropped_after_a_bare_async_for_kill_the_workers_running_items(
    tmp_path,
) -> None:
    first, second = LongItem(tmp_path, "first"), LongItem(tmp_path, "second")
    items = [(workers.identity, "done"), first.call, second.call]
    # A worker for each item: chunks need not start in input order, and none may wait
    # for a worker behind a long item.
    async with contract_pool(3) as pool:
        results = pool.map(workers.apply, items)
        async for _ in results:
            pids = [await first.started(), await second.started()]
            break
        del results
        gc.collect()
        assert await wait_until_async(lambda: gone(pids[0]) and gone(pids[1]), timeout=3)
        assert await collect(pool.map(workers.square, [2, 3])) == [4, 9]


# --- progress --------------------------------------------------------------------------------


async def test_progress_gets_results_done_and_the_length_of_a_list() -> None:
    calls: list[tuple[int, int | None]] = []
    async with contract_pool(2) as pool:
        results = pool.map(
            workers.square, [1, 2, 3, 4], progress=lambda done, total: calls.append((done, total))
        )
        assert await collect(results) == [1, 4, 9, 16]
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_progress_gets_none_as_the_total_of_a_generator() -> None:
    calls: list[tuple[int, int | None]] = []
    async with contract_pool(2) as pool:
        results = pool.map(
            workers.square,
            (item for item in [1, 2, 3]),
            progress=lambda done, total: calls.append((done, total)),
        )
        assert await collect(results) == [1, 4, 9]
    assert calls == [(1, None), (2, None), (3, None)]


async def test_progress_true_shows_a_tqdm_bar(capsys: pytest.CaptureFixture[str]) -> None:
    async with contract_pool(2) as pool:
        assert await collect(pool.map(workers.square, [1, 2, 3], progress=True)) == [1, 4, 9]
    assert "3/3" in capsys.readouterr().err


async def test_progress_true_without_tqdm_names_the_extra_that_provides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes the import fail, as if tqdm were not installed.
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    async with contract_pool(2) as pool:
        with pytest.raises(ImportError, match=re.escape("anypool[progress]")):
            await collect(pool.map(workers.square, [1, 2, 3], progress=True))


# --- arguments, closed pool, options ---------------------------------------------------------


@pytest.mark.parametrize(
    ("chunksize", "error_type"), [(0, ValueError), (-1, ValueError), ("big", TypeError)]
)
async def test_invalid_chunksize_raises_an_error_naming_it(
    chunksize: object, error_type: type[Exception]
) -> None:
    async with contract_pool(2) as pool:
        with pytest.raises(error_type, match="chunksize"):
            await collect(pool.map(workers.square, [1, 2], chunksize=chunksize))


@pytest.mark.parametrize("max_in_flight", [0, -1])
async def test_max_in_flight_below_one_raises_value_error(max_in_flight: int) -> None:
    async with contract_pool(2) as pool:
        with pytest.raises(ValueError, match="max_in_flight"):
            await collect(pool.map(workers.square, [1, 2], max_in_flight=max_in_flight))


async def test_map_on_a_closed_pool_raises_pool_closed_error_when_iterated() -> None:
    async with contract_pool(2) as pool:
        pass
    results = pool.map(workers.square, [1, 2])
    with pytest.raises(anypool.PoolClosedError):
        await collect(results)


async def test_map_on_a_view_without_kill_on_cancel_yields_every_result() -> None:
    async with contract_pool(2) as pool:
        view = pool.with_options(kill_on_cancel=False)
        assert await collect(view.map(workers.square, range(6))) == [0, 1, 4, 9, 16, 25]


async def test_map_on_a_view_without_kill_on_cancel_lets_the_worker_finish_when_left_early(
    tmp_path,
) -> None:
    pid_file, release = tmp_path / "pid", tmp_path / "release"
    items = [(workers.identity, "done"), (workers.write_pid_and_wait_for, pid_file, release)]
    # A worker for each item: chunks need not start in input order, and none may wait
    # for a worker behind a long item.
    async with contract_pool(2) as pool:
        view = pool.with_options(kill_on_cancel=False)
        async with view.map(workers.apply, items) as results:
            async for _ in results:
                pid = await read_pid(pid_file)
                break
        assert not gone(pid)
        release.touch()
        if contract().owns_workers:
            # The worker finishes the abandoned item and, the most recently used, serves the
            # next call.
            assert await wait_until_async(lambda: pool.stats().workers_busy == 0)
            assert await pool.run(workers.current_pid) == pid
        else:
            # The task runs to its end, not killed.
            assert await wait_until_async(lambda: pool.stats().calls_pending == 0)
            assert not dead(pid)


# --- ranges ----------------------------------------------------------------------------------
# A range goes to the workers in ranges, not item by item: the same results as for a list.

RANGES = [
    range(0),
    range(1),
    range(10),
    range(3, 50, 4),
    range(40, -9, -3),
    range(2**70, 2**70 + 12),
]


@pytest.mark.parametrize("chunksize", [1, 4, "auto"])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
async def test_a_range_gives_the_result_of_each_of_its_numbers(
    chunksize: int | str, ordered: bool
) -> None:
    async with contract_pool(2) as pool:
        for numbers in RANGES:
            results = await collect(
                pool.map(workers.square, numbers, chunksize=chunksize, ordered=ordered)
            )
            expected = [workers.square(number) for number in numbers]
            if not ordered:
                results, expected = sorted(results), sorted(expected)  # type: ignore[type-var]
            assert results == expected, numbers


async def test_a_range_longer_than_sys_maxsize_is_mapped_lazily() -> None:
    # len() of such a range raises OverflowError: progress gets no total.
    numbers = range(2**70)
    calls: list[tuple[int, int | None]] = []
    received: list[object] = []
    async with (
        contract_pool(2) as pool,
        pool.map(
            workers.square, numbers, chunksize=3, progress=lambda *counts: calls.append(counts)
        ) as results,
    ):
        async for result in results:
            received.append(result)
            if len(received) == 7:
                break
    assert received == [number * number for number in range(7)]
    # Counted a chunk at a time, as handed out.
    assert calls[:2] == [(3, None), (6, None)]


async def test_progress_gets_the_length_of_a_range() -> None:
    calls: list[tuple[int, int | None]] = []
    async with contract_pool(2) as pool:
        results = pool.map(
            workers.square, range(1, 4), progress=lambda done, total: calls.append((done, total))
        )
        assert await collect(results) == [1, 4, 9]
    assert calls == [(1, 3), (2, 3), (3, 3)]


class TenfoldList(list[int]):
    """A list whose iteration gives ten times its items."""

    def __iter__(self) -> Iterator[int]:
        return (item * 10 for item in super().__iter__())


@pytest.mark.parametrize("chunksize", [1, 2, "auto"])
async def test_lists_tuples_and_a_list_subclass_give_what_iterating_them_gives(
    chunksize: int | str,
) -> None:
    async with contract_pool(2) as pool:
        for items in ([], [1, 2, 3], (), (4, 5, 6, 7, 8)):
            results = await collect(pool.map(workers.square, items, chunksize=chunksize))
            assert results == [item * item for item in items], items
        # Its own way of iterating is kept.
        results = await collect(pool.map(workers.square, TenfoldList([1, 2]), chunksize=chunksize))
        assert results == [100, 400]


async def test_items_appended_to_a_list_while_it_is_mapped_are_mapped_too() -> None:
    # A work list that grows from its results, as a crawler's does: the list's end is reached
    # only once it has no item left to take, as iterating it would.
    todo = [1]
    received: list[object] = []
    async with contract_pool(2) as pool:
        async for result in pool.map(workers.square, todo, max_in_flight=1):
            received.append(result)
            if len(todo) < 5:
                todo.append(len(todo) + 1)
    assert received == [1, 4, 9, 16, 25]


@pytest.mark.parametrize("chunksize", [1, 3])
async def test_an_error_from_a_number_of_a_range_comes_after_the_results_before_it(
    chunksize: int,
) -> None:
    received: list[object] = []
    async with contract_pool(2) as pool:
        results = pool.map(workers.square_unless_negative, range(3, -4, -1), chunksize=chunksize)
        with pytest.raises(ValueError, match=r"^negative item -1$"):
            await collect_into(received, results)
        assert received == [9, 4, 1, 0]
        placed = await collect(
            pool.map(
                workers.square_unless_negative,
                range(3, -4, -1),
                chunksize=chunksize,
                return_exceptions=True,
            )
        )
    assert placed[:4] == [9, 4, 1, 0]
    assert [str(error) for error in placed[4:]] == [f"negative item {n}" for n in (-1, -2, -3)]


# --- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 7, "auto"])
@pytest.mark.parametrize("ordered", [True, False])
async def test_batches_give_every_result_as_plain_iteration_would(
    chunksize: int | str, ordered: bool
) -> None:
    async with (
        contract_pool(2) as pool,
        pool.map(workers.square, range(3000), chunksize=chunksize, ordered=ordered) as results,
    ):
        batches = [batch async for batch in results.batches()]
    assert all(batches)
    flat = [value for batch in batches for value in batch]
    expected = [x * x for x in range(3000)]
    assert flat == expected if ordered else sorted(flat) == expected


async def test_batches_raise_an_items_exception_after_the_results_before_it() -> None:
    received: list[object] = []

    async def consume(results: anypool.MapResults[int]) -> None:
        async for batch in results.batches():
            received.extend(batch)

    async with contract_pool(2) as pool:
        results = pool.map(workers.square_unless_negative, [0, 1, 2, 3, -4, 5, 6], chunksize=3)
        with pytest.raises(ValueError, match="negative item -4"):
            await consume(results)
        assert pool.stats().calls_running == 0
    assert received == [0, 1, 4, 9]


async def test_batches_hold_exceptions_in_place_with_return_exceptions() -> None:
    async with contract_pool(2) as pool:
        results = pool.map(
            workers.square_unless_negative, [1, -2, 3, -4, 5], chunksize=2, return_exceptions=True
        )
        flat = [value async for batch in results.batches() for value in batch]
    assert [value if isinstance(value, int) else str(value) for value in flat] == [
        1,
        "negative item -2",
        9,
        "negative item -4",
        25,
    ]
