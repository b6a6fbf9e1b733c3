"""Cancelling a call kills the worker running it, and nothing else, on every backend.

Each scenario lets the victim's call start (its worker writes its pid) before the cancellation
fires, so the tests need no timing. A bystander call on another worker runs throughout and must
complete normally.
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

import anypool
import workers
from support import (
    Victim,
    assert_pool_serves,
    bystander_call,
    contract,
    contract_pool,
    gone,
    killed,
    pool_processes,
    read_pid,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("contract_backend")]


async def expire_when_started(victim: Victim, scope: anyio.CancelScope) -> None:
    """Move the deadline of ``scope`` to now once the victim's call runs."""
    await victim.started()
    scope.deadline = anyio.current_time()


async def run_under_fail_after(victim: Victim) -> None:
    """The victim's call under ``anyio.fail_after``, whose deadline passes once the call runs."""
    with anyio.fail_after(60) as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(expire_when_started, victim, scope)
            await victim.run()


async def test_fail_after_kills_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path):
            with pytest.raises(TimeoutError):
                await run_under_fail_after(victim)
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def test_move_on_after_kills_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path):
            with anyio.move_on_after(60) as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(expire_when_started, victim, scope)
                    await victim.run()
            assert scope.cancelled_caught
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def test_cancelled_task_group_kills_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path), anyio.create_task_group() as group:
            group.start_soon(victim.run)
            await victim.started()
            group.cancel_scope.cancel()
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def test_cancel_kills_only_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path) as bystander_pid:
            async with anyio.create_task_group() as group:
                group.start_soon(victim.run)
                await victim.started()
                group.cancel_scope.cancel()
            assert await killed(victim.pid)
            assert not gone(bystander_pid)
            if contract().owns_workers:
                assert pool_processes() == {bystander_pid}


async def test_next_call_after_a_cancellation_runs_on_a_new_worker(tmp_path) -> None:
    async with contract_pool(1) as pool:
        victim = Victim(pool, tmp_path)
        async with anyio.create_task_group() as group:
            group.start_soon(victim.run)
            await victim.started()
            group.cancel_scope.cancel()
        pid = await pool.run(workers.current_pid)
        assert pid != victim.pid
        if contract().owns_workers:
            assert await pool.run(workers.current_pid) == pid


async def test_call_in_an_already_cancelled_scope_raises_and_starts_no_worker() -> None:
    async with contract_pool(1) as pool:
        reached_after_run = False
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.run(workers.square, 2)
            reached_after_run = True
        assert scope.cancelled_caught
        assert not reached_after_run
        assert pool.stats().workers_alive == 0
        assert pool_processes() == set()


async def test_call_in_an_already_cancelled_scope_is_never_sent_to_the_idle_worker() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.run(workers.square, 2)
        assert scope.cancelled_caught
        stats = pool.stats()
        assert (stats.workers_replaced, stats.calls_cancelled) == (0, 0)
        await assert_pool_serves(pool, pid)


async def test_cancel_while_waiting_for_a_worker_does_not_disturb_the_running_call(
    tmp_path,
) -> None:
    release = tmp_path / "release"
    results: list[int] = []

    async def hold() -> None:
        results.append(await pool.run(workers.write_pid_and_wait_for, tmp_path / "pid", release))

    async with contract_pool(1) as pool:
        async with anyio.create_task_group() as group:
            group.start_soon(hold)
            pid = await read_pid(tmp_path / "pid")
            with anyio.move_on_after(60) as scope:
                async with anyio.create_task_group() as waiting:
                    waiting.start_soon(pool.run, workers.square, 2)
                    # Let the call reach the pool and queue for the busy worker.
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()
            assert not gone(pid)
            release.touch()
        assert results == [pid]
        await assert_pool_serves(pool, pid)


@pytest.mark.timing
@pytest.mark.backends("local")  # kill_grace, SIGTERM then SIGKILL
async def test_worker_ignoring_sigterm_is_killed_after_kill_grace(tmp_path) -> None:
    kill_grace = 0.5
    marker = tmp_path / "got-sigterm"
    async with contract_pool(1, kill_grace=kill_grace) as pool:
        async with anyio.create_task_group() as group:
            group.start_soon(pool.run, workers.note_sigterm_and_sleep, tmp_path / "pid", marker, 60)
            pid = await read_pid(tmp_path / "pid")
            started = time.monotonic()
            group.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        assert gone(pid)
        assert marker.exists(), "the worker got no SIGTERM before the SIGKILL"
        assert kill_grace * 0.8 <= elapsed < kill_grace + 2.0
        assert await pool.run(workers.square, 4) == 16


async def test_kill_on_cancel_false_returns_promptly_and_keeps_the_worker(tmp_path) -> None:
    # (Ray's workers are Ray's: there, the call runs to its end and the pool serves again.)
    release = tmp_path / "release"
    async with contract_pool(1) as pool:
        patient = pool.with_options(kill_on_cancel=False)
        pid = await pool.run(workers.current_pid)
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    patient.run,
                    workers.write_pid_wait_for_and_linger,
                    tmp_path / "pid",
                    release,
                    0.2,
                )
                abandoned = await read_pid(tmp_path / "pid")
                assert abandoned == pid or not contract().owns_workers
                scope.cancel()
        # The call was abandoned while its worker still waits for the release: it cannot have
        # finished yet.
        assert scope.cancelled_caught
        assert not gone(abandoned)
        release.touch()
        # The worker finishes the abandoned call, its result is dropped, and it serves again.
        await assert_pool_serves(pool, pid)
        stats = pool.stats()
        assert (stats.calls_cancelled, stats.workers_replaced) == (1, 0)


async def test_kill_on_cancel_false_discards_the_abandoned_result(tmp_path) -> None:
    async with contract_pool(1) as pool:
        patient = pool.with_options(kill_on_cancel=False)
        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(
                    patient.run,
                    workers.write_pid_wait_for_and_linger,
                    tmp_path / "pid",
                    tmp_path / "pid",  # released as soon as it starts
                    0.3,
                )
                await read_pid(tmp_path / "pid")
                scope.cancel()
        assert await pool.run(workers.square, 5) == 25
        assert await pool.run(workers.identity, "mine") == "mine"


async def test_kill_on_cancel_is_passed_to_the_function_as_a_keyword_argument() -> None:
    async with contract_pool(1) as pool:
        assert await pool.run(workers.keyword_arguments, kill_on_cancel=1) == {"kill_on_cancel": 1}


async def test_with_options_view_shares_workers_and_lifecycle_with_the_pool() -> None:
    async with contract_pool(1) as pool:
        patient = pool.with_options(kill_on_cancel=False)
        pid = await pool.run(workers.current_pid)
        await assert_pool_serves(patient, pid)
        assert patient.stats() == pool.stats()
        assert patient.max_workers == pool.max_workers
        # A view has no lifecycle: closing, joining, terminating are the pool's.
        assert isinstance(patient, anypool.PoolView)
        assert not isinstance(patient, anypool.Pool)
        for lifecycle in ("close", "join", "terminate", "__aenter__", "__aexit__"):
            assert not hasattr(patient, lifecycle)
        pool.close()
        with pytest.raises(anypool.PoolClosedError):
            await patient.run(workers.current_pid)


async def test_workers_ignore_sigint(tmp_path) -> None:
    release = tmp_path / "release"
    async with contract_pool(1) as pool:
        async with anyio.create_task_group() as group:
            results: list[str] = []

            async def call() -> None:
                results.append(
                    await pool.run(
                        workers.write_pid_wait_for_and_linger, tmp_path / "pid", release, 0.2
                    )
                )

            group.start_soon(call)
            pid = await read_pid(tmp_path / "pid")
            os.kill(pid, signal.SIGINT)
            release.touch()
        assert results == ["finished"]
        await assert_pool_serves(pool, pid)


@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
async def test_cancel_reaps_the_worker_under_every_start_method(
    start_method: str, tmp_path
) -> None:
    async with contract_pool(1, start_method=start_method) as pool:
        victim = Victim(pool, tmp_path)
        async with anyio.create_task_group() as group:
            group.start_soon(victim.run)
            await victim.started()
            group.cancel_scope.cancel()
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9
