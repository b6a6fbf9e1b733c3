"""asyncio's own ways to cancel (asyncio.timeout, asyncio.wait_for, task.cancel()) kill the
worker running the call, as anyio's do; on plain asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import sys

import pytest

import workers
from support import (
    ASYNCIO_BACKEND_IDS,
    ASYNCIO_BACKENDS,
    Victim,
    assert_pool_serves,
    bystander_call,
    contract_pool,
    gone,
    read_pid,
)

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS),
]


async def run_under_asyncio_timeout(victim: Victim) -> None:
    """The victim's call under ``asyncio.timeout``, rescheduled to now once the call runs."""

    async def expire_when_started() -> None:
        await victim.started()
        timeout.reschedule(asyncio.get_running_loop().time())

    async with asyncio.timeout(60) as timeout:
        expiry = asyncio.create_task(expire_when_started())
        try:
            await victim.run()
        finally:
            expiry.cancel()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is new in Python 3.11")
async def test_asyncio_timeout_kills_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path):
            with pytest.raises(TimeoutError):
                await run_under_asyncio_timeout(victim)
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def test_asyncio_wait_for_kills_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path):
            # Warm the victim's worker, so that the call is surely running when the timeout hits.
            await pool.run(workers.current_pid)
            with pytest.raises(asyncio.TimeoutError):  # (TimeoutError itself from Python 3.11)
                await asyncio.wait_for(victim.run(), timeout=1.0)
        assert victim.pid_file.exists(), "the call had not started when wait_for timed out"
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def test_task_cancel_kills_the_worker_running_the_call(tmp_path) -> None:
    async with contract_pool(2) as pool:
        victim = Victim(pool, tmp_path)
        async with bystander_call(pool, tmp_path):
            task = asyncio.create_task(victim.run())
            await victim.started()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await victim.assert_killed()
        assert await pool.run(workers.square, 3) == 9


async def test_task_cancel_with_kill_on_cancel_false_keeps_the_worker(tmp_path) -> None:
    release = tmp_path / "release"
    async with contract_pool(1) as pool:
        patient = pool.with_options(kill_on_cancel=False)
        task = asyncio.create_task(
            patient.run(workers.write_pid_and_wait_for, tmp_path / "pid", release)
        )
        pid = await read_pid(tmp_path / "pid")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not gone(pid)
        release.touch()
        # The worker finishes the abandoned call and serves again (on Ray, the task runs to its
        # end, and the pool serves again: on whichever of Ray's workers).
        await assert_pool_serves(pool, pid)
