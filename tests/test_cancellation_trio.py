"""trio's own ways to cancel (move_on_after, a cancelled nursery) kill the worker running the
call, run under pytest-trio with no anyio in the test."""

from __future__ import annotations

import pytest
import trio

import workers
from support import Victim, bystander_call, contract_pool

pytestmark = [pytest.mark.trio, pytest.mark.usefixtures("contract_backend")]


async def test_trio_move_on_after_kills_the_worker_running_the_call(tmp_path) -> None:
    async def expire_when_started(scope: trio.CancelScope) -> None:
        await victim.started()
        scope.deadline = trio.current_time()

    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path):
            with trio.move_on_after(60) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(expire_when_started, scope)
                    await victim.run()
            assert scope.cancelled_caught
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def run_under_trio_fail_after(victim: Victim) -> None:
    """The victim's call under ``trio.fail_after``, whose deadline passes once the call runs."""

    async def expire_when_started() -> None:
        await victim.started()
        scope.deadline = trio.current_time()

    with trio.fail_after(60) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(expire_when_started)
            await victim.run()


async def test_trio_fail_after_raises_too_slow_error_and_kills_the_worker(tmp_path) -> None:
    async with contract_pool(1) as pool:
        victim = Victim(pool, tmp_path)
        with pytest.raises(trio.TooSlowError):
            await run_under_trio_fail_after(victim)
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def test_cancelled_nursery_kills_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path), trio.open_nursery() as nursery:
            nursery.start_soon(victim.run)
            await victim.started()
            nursery.cancel_scope.cancel()
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9
