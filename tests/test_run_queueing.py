"""When every worker is busy with short calls, pool.run sends the next call to a busy worker, to
start there as soon as the call it runs is over (the worker then never waits for the parent in
between). What that must not change: a call cancelled while it waits in a worker's pipe never
runs and spares that worker; when the call ahead of it is cancelled, or its worker dies, the
waiting call runs elsewhere, once; a call ahead that finished just as it was cancelled does not
take the call behind it down with its worker; and ``max_tasks_per_worker`` counts every call.

These are tests of the local backend's own mechanics: they read its calls waiting behind
another (``support.local_workers``) to know that a call was sent ahead, which nothing public
tells, and widen ``QUEUE_BEHIND_SECONDS`` so that the call ahead counts as short however slowly
this machine runs it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import anypool
import anypool.backends.local.sendahead
import workers
from support import (
    gone,
    local_workers,
    read_pid,
    read_pid_blocking,
    stays_true,
    wait_until_async,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def calls_count_as_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anypool.backends.local.sendahead, "QUEUE_BEHIND_SECONDS", 60.0)


def runs(log: Path) -> list[int]:
    """The pids that ran ``workers.append_pid_and_return`` logging to ``log``, one per run."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []


class Caller:
    """A call in a task of its own, which the test may cancel; what the caller got."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.outcome: object = None
        self.done = anyio.Event()

    async def run(self, pool: anypool.Pool, fn: Any, *args: object) -> None:
        with self.scope:
            try:
                self.outcome = await pool.run(fn, *args)
            except Exception as error:
                self.outcome = error
        if self.scope.cancelled_caught:
            self.outcome = "cancelled"
        self.done.set()


def start(group: anyio.abc.TaskGroup, pool: anypool.Pool, fn: Any, *args: object) -> Caller:
    caller = Caller()
    group.start_soon(caller.run, pool, fn, *args)
    return caller


async def start_ahead(
    group: anyio.abc.TaskGroup, pool: anypool.Pool, tmp_path: Path, release: Path
) -> Caller:
    """Start a call that returns its worker's pid once ``release`` exists, and return once it
    runs."""
    caller = start(group, pool, workers.write_pid_and_wait_for, tmp_path / "ahead", release)
    await read_pid(tmp_path / "ahead")
    return caller


async def start_behind(
    group: anyio.abc.TaskGroup, pool: anypool.Pool, fn: Any, *args: object
) -> Caller:
    """Start a call, and return once it waits in the pipe of the busy worker."""
    caller = start(group, pool, fn, *args)
    places = local_workers(pool).ahead.queued
    assert await wait_until_async(lambda: any(slot.sent for slot in places.values()))
    return caller


async def turn_told(pool: anypool.Pool) -> None:
    """Wait until the call sent ahead was told that the call before it is over."""
    places = local_workers(pool).ahead.queued
    assert await wait_until_async(lambda: not places)


async def test_a_call_sent_behind_a_short_one_runs_next_on_the_same_worker(
    tmp_path: Path,
) -> None:
    release, log = tmp_path / "release", tmp_path / "log"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        async with anyio.create_task_group() as group:
            ahead = await start_ahead(group, pool, tmp_path, release)
            behind = await start_behind(group, pool, workers.append_pid_and_return, log, "b")
            assert await stays_true(lambda: not log.exists(), 0.2)
            release.touch()
        assert (ahead.outcome, behind.outcome) == (pid, "b")
        assert runs(log) == [pid]
        assert pool.stats().workers_replaced == 0
        assert not local_workers(pool).ahead.queued


@pytest.mark.parametrize("kill_on_cancel", [True, False], ids=["kill", "no-kill"])
async def test_a_call_cancelled_while_it_waits_behind_another_never_runs_and_spares_the_worker(
    tmp_path: Path, kill_on_cancel: bool
) -> None:
    release, log = tmp_path / "release", tmp_path / "log"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        view = pool.with_options(kill_on_cancel=kill_on_cancel)
        async with anyio.create_task_group() as group:
            ahead = await start_ahead(group, pool, tmp_path, release)
            behind = await start_behind(group, view, workers.append_pid_and_return, log, "b")
            behind.scope.cancel()
            await behind.done.wait()
            release.touch()
        assert (ahead.outcome, behind.outcome) == (pid, "cancelled")
        assert await pool.run(workers.current_pid) == pid
        assert runs(log) == []
        stats = pool.stats()
        assert (stats.workers_replaced, stats.calls_cancelled, stats.calls_running) == (0, 1, 0)


async def test_when_the_call_ahead_is_cancelled_the_call_behind_runs_on_another_worker(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        async with anyio.create_task_group() as group:
            never = tmp_path / "never"
            ahead = await start_ahead(group, pool, tmp_path, never)
            behind = await start_behind(group, pool, workers.append_pid_and_return, log, "b")
            ahead.scope.cancel()
        assert (ahead.outcome, behind.outcome) == ("cancelled", "b")
        assert gone(pid)
        [other] = runs(log)
        assert other != pid
        assert pool.stats().workers_replaced == 1


async def test_when_the_worker_dies_under_the_call_ahead_the_call_behind_runs_on_another(
    tmp_path: Path,
) -> None:
    release, log = tmp_path / "release", tmp_path / "log"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        async with anyio.create_task_group() as group:
            ahead = start(group, pool, workers.wait_for_then_exit, release, 3)
            assert await wait_until_async(lambda: pool.stats().calls_running == 1)
            behind = await start_behind(group, pool, workers.append_pid_and_return, log, "b")
            release.touch()
        assert isinstance(ahead.outcome, anypool.BrokenWorkerError)
        assert ahead.outcome.exitcode == 3
        assert behind.outcome == "b"
        [other] = runs(log)
        assert other != pid


async def test_a_call_ahead_that_finished_as_it_was_cancelled_spares_the_call_behind(
    tmp_path: Path,
) -> None:
    # The parent's event loop is blocked while the worker finishes the call ahead and starts
    # the one behind it; only then does the cancellation of the call ahead take effect. The
    # worker is running another caller's call by then: it must go on, not be killed.
    release = tmp_path / "release"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        async with anyio.create_task_group() as group:
            ahead = start(group, pool, workers.sleep_then_return, 0.2, "a")
            assert await wait_until_async(lambda: pool.stats().calls_running == 1)
            behind = await start_behind(
                group, pool, workers.write_pid_and_wait_for, tmp_path / "b", release
            )
            ahead.scope.cancel()
            # Blocks the event loop until the worker started the call behind.
            assert read_pid_blocking(tmp_path / "b") == pid
            await ahead.done.wait()
            release.touch()
        assert (ahead.outcome, behind.outcome) == ("cancelled", pid)
        assert pool.stats().workers_replaced == 0


async def test_a_call_ahead_that_talks_to_a_queue_does_not_mix_up_the_call_behind(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    async with anypool.Pool(1) as pool:
        await pool.run(workers.current_pid)
        queue: anypool.Queue[object] = anypool.Queue()
        async with anyio.create_task_group() as group:
            ahead = start(group, pool, workers.queue_get, queue)
            assert await wait_until_async(lambda: pool.stats().calls_running == 1)
            behind = await start_behind(group, pool, workers.append_pid_and_return, log, "b")
            await queue.put("item")
        assert (ahead.outcome, behind.outcome) == ("item", "b")


async def test_max_tasks_per_worker_counts_the_calls_sent_ahead() -> None:
    pids: list[int] = []
    async with anypool.Pool(2, max_tasks_per_worker=3) as pool, anyio.create_task_group() as group:

        async def one() -> None:
            pids.append(await pool.run(workers.current_pid))

        for _ in range(40):
            group.start_soon(one)
    assert len(pids) == 40
    assert max(Counter(pids).values()) <= 3


async def test_no_call_is_sent_behind_a_call_that_runs_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anypool.backends.local.sendahead, "QUEUE_BEHIND_SECONDS", 0.005)
    release = tmp_path / "release"
    async with anypool.Pool(1) as pool:
        await pool.run(workers.sleep_then_return, 0.05, None)  # the worker's calls run long
        async with anyio.create_task_group() as group:
            ahead = await start_ahead(group, pool, tmp_path, release)
            behind = start(group, pool, workers.current_pid)
            assert await stays_true(lambda: not local_workers(pool).ahead.queued, 0.2)
            release.touch()
        assert isinstance(ahead.outcome, int)
        assert ahead.outcome == behind.outcome


@pytest.mark.parametrize("cancelled", [False, True], ids=["runs", "cancelled"])
async def test_a_call_that_waited_for_a_place_is_sent_ahead_when_the_worker_moves_on(
    tmp_path: Path, cancelled: bool
) -> None:
    # Three calls on one worker: the second waits in its pipe, the third waits in the parent
    # for that place, and is sent as soon as the second starts, without waking its task.
    first, second, log = tmp_path / "first", tmp_path / "second", tmp_path / "log"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        async with anyio.create_task_group() as group:
            ahead = await start_ahead(group, pool, tmp_path, first)
            middle = await start_behind(
                group, pool, workers.write_pid_and_wait_for, tmp_path / "b", second
            )
            last = start(group, pool, workers.append_pid_and_return, log, "c")
            assert await wait_until_async(lambda: len(local_workers(pool).waiters) == 1)
            first.touch()
            await read_pid(tmp_path / "b")
            assert await wait_until_async(
                lambda: local_workers(pool).ahead.queued and not local_workers(pool).waiters
            )
            if cancelled:
                last.scope.cancel()
                await last.done.wait()
            second.touch()
        assert (ahead.outcome, middle.outcome) == (pid, pid)
        assert last.outcome == ("cancelled" if cancelled else "c")
        assert runs(log) == ([] if cancelled else [pid])
        assert await pool.run(workers.current_pid) == pid
        assert pool.stats().workers_replaced == 0


# Once the call ahead is over, the call behind it is the worker's; on asyncio its task sleeps on
# until the worker has more to say than that it started the call (one wake-up, not two).


async def cancel_as_it_runs(
    pool: anypool.Pool, caller: Caller, pid: int, release: Path, *, kill_on_cancel: bool
) -> None:
    """Cancel a call sent ahead that runs on worker ``pid`` (the call ahead of it is over):
    with ``kill_on_cancel`` the worker is gone by the time the cancellation returns. Then let
    the call finish, in the worker kept otherwise."""
    await turn_told(pool)
    caller.scope.cancel()
    await caller.done.wait()
    if kill_on_cancel:
        assert gone(pid)
    release.touch()


@pytest.mark.parametrize("kill_on_cancel", [True, False], ids=["kill", "no-kill"])
async def test_a_call_sent_ahead_cancelled_while_it_runs_is_stopped_as_any_call(
    tmp_path: Path, kill_on_cancel: bool
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        view = pool.with_options(kill_on_cancel=kill_on_cancel)
        async with anyio.create_task_group() as group:
            ahead = await start_ahead(group, pool, tmp_path, first)
            behind = await start_behind(
                group, view, workers.write_pid_and_wait_for, tmp_path / "b", second
            )
            first.touch()
            assert await read_pid(tmp_path / "b") == pid
            await ahead.done.wait()
            await cancel_as_it_runs(view, behind, pid, second, kill_on_cancel=kill_on_cancel)
        assert (ahead.outcome, behind.outcome) == (pid, "cancelled")
        same_worker = await pool.run(workers.current_pid) == pid
        assert same_worker is not kill_on_cancel
        stats = pool.stats()
        assert (stats.workers_replaced, stats.calls_cancelled) == (int(kill_on_cancel), 1)


@pytest.mark.parametrize("kill_on_cancel", [True, False], ids=["kill", "no-kill"])
async def test_a_call_the_pool_sent_ahead_cancelled_while_it_runs_is_stopped_as_any_call(
    tmp_path: Path, kill_on_cancel: bool
) -> None:
    # As above, for a call that waited for its place and was sent by the pool (its task slept
    # from before it was sent until it was cancelled).
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        view = pool.with_options(kill_on_cancel=kill_on_cancel)
        async with anyio.create_task_group() as group:
            ahead = await start_ahead(group, pool, tmp_path, first)
            middle = await start_behind(
                group, pool, workers.write_pid_and_wait_for, tmp_path / "b", second
            )
            last = start(group, view, workers.write_pid_and_wait_for, tmp_path / "c", third)
            assert await wait_until_async(lambda: len(local_workers(pool).waiters) == 1)
            first.touch()
            await read_pid(tmp_path / "b")
            second.touch()
            assert await read_pid(tmp_path / "c") == pid
            await middle.done.wait()
            await cancel_as_it_runs(view, last, pid, third, kill_on_cancel=kill_on_cancel)
        assert (ahead.outcome, middle.outcome, last.outcome) == (pid, pid, "cancelled")
        same_worker = await pool.run(workers.current_pid) == pid
        assert same_worker is not kill_on_cancel


async def test_a_call_sent_ahead_whose_worker_dies_as_it_runs_raises_broken_worker_error(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        async with anyio.create_task_group() as group:
            ahead = await start_ahead(group, pool, tmp_path, first)
            behind = await start_behind(group, pool, workers.wait_for_then_exit, second, 5)
            first.touch()
            await ahead.done.wait()
            await turn_told(pool)
            second.touch()
        assert ahead.outcome == pid
        assert isinstance(behind.outcome, anypool.BrokenWorkerError)
        assert (behind.outcome.pid, behind.outcome.exitcode) == (pid, 5)
        assert await pool.run(workers.current_pid) != pid
