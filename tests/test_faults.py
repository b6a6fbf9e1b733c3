"""Faults in workers, for pool.run, pool.map and pool.stream, on every backend.

- A worker that dies during a call (``os._exit``, a SIGKILL from outside, a segfault) fails that
  call only, with ``BrokenWorkerError`` (its pid, exit code and signal name); a call running on
  another worker meanwhile completes, and the pool serves the next call on a new worker.
  ``map`` raises it after the results before it (or yields it in its item's place with
  ``return_exceptions=True``); ``stream`` raises it after the items yielded before it.
- ``MemoryError`` (under a lowered ``RLIMIT_AS``) and ``RecursionError`` are delivered as
  themselves, with their remote traceback, and the worker lives on.
- A worker that resists SIGTERM (a handler that swallows it, or one that never returns) is
  SIGKILLed ``kill_grace`` after its call is cancelled, and the cancellation returns soon after.
- A stream generator that ignores GeneratorExit when the consumer leaves early: one that sleeps
  instead is killed after ``kill_grace``; one that yields again is closed at once by Python
  (``RuntimeError: generator ignored GeneratorExit``, dropped) and its worker is kept.

On Ray (docs/distributed.md) ``BrokenWorkerError`` does not say which process died, nor how
(``reports_exits``: pid, exit code and signal are ``None``), and Ray's worker processes are not
the pool's (``owns_workers``: no worker counts; a dead one is Ray's to reap): those assertions
are the local pool's. SIGTERM, ``kill_grace`` and GeneratorExit are the local pool's own
mechanics (Ray kills a cancelled call's process at once, and a stream's when its consumer
leaves): those tests run on the local backend only.

Files, not timing, order things: a worker writes its pid to a file once it is where the test
wants it, and the test waits for that file before killing or cancelling.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

import anypool
import workers
from anypool.backends import Feature
from support import (
    assert_items_before_a_crash,
    bystander_call,
    contract,
    contract_pool,
    dead,
    gone,
    killed,
    pool_processes,
    read_pid,
    wait_until_async,
    where_local,
)

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    pytest.mark.anyio,
    # A fault that hangs the pool fails in seconds rather than after the suite's default timeout.
    pytest.mark.timeout(30),
]

KILL_GRACE = 0.5
# How much longer than kill_grace a cancellation may take to return, on a loaded machine.
MARGIN = 1.5

# The faults a worker dies of: the exit code and signal name BrokenWorkerError reports.
DEATHS: dict[str, tuple[int, str | None]] = {
    "exit": (workers.FAULT_EXIT_CODE, None),
    "sigkill": (-signal.SIGKILL, "SIGKILL"),
    "segfault": (-signal.SIGSEGV, "SIGSEGV"),
}
# The faults a worker survives: the exception the caller gets, and a fragment of its traceback.
SURVIVABLE: dict[str, tuple[type[BaseException], str]] = {
    "memory": (MemoryError, "exhaust_address_space"),
    "recursion": (RecursionError, "recurse_forever"),
}
FAULTS = [*DEATHS, *SURVIVABLE]

KINDS = ["sync", "async"]


# --- helpers ---------------------------------------------------------------------------------


class Fault:
    """A fault a worker meets in a call, and what the caller got from that call."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        self.pid_file = tmp_path / f"{name}.pid"
        self.received: list[object] = []
        self.error: Exception | None = None

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text())

    async def provoke(self, consume: Callable[[list[object]], Awaitable[None]]) -> None:
        """Run ``consume(received)``, the call under test, and keep the exception it raises;
        for "sigkill", SIGKILL the worker from outside once it has written its pid."""

        async def kill_from_outside() -> None:
            os.kill(await read_pid(self.pid_file), signal.SIGKILL)

        async with anyio.create_task_group() as group:
            if self.name == "sigkill":
                group.start_soon(kill_from_outside)
            try:
                await consume(self.received)
            except Exception as error:
                self.error = error

    async def assert_broken_worker_error(self, error: object, during: str) -> None:
        """``error`` is the BrokenWorkerError for this fault's worker, which no longer exists."""
        assert type(error) is anypool.BrokenWorkerError, f"got {error!r}"
        assert isinstance(error, RuntimeError)
        pid = self.pid
        message = str(error)
        if contract().reports_exits:
            exitcode, signal_name = DEATHS[self.name]
            assert (error.pid, error.exitcode, error.signal_name) == (pid, exitcode, signal_name)
            assert f"worker process {pid} " in message
            if signal_name is None:
                assert f"exited with code {exitcode}" in message
            else:
                assert f"was killed by {signal_name}" in message
        else:
            assert (error.pid, error.exitcode, error.signal_name) == (None, None, None)
        assert during in message
        assert await killed(pid), f"worker {pid} still exists after its BrokenWorkerError"

    def assert_delivered_as_itself(self, error: object) -> None:
        """``error`` is this fault's exception with its remote traceback; the worker lives."""
        expected_type, frame = SURVIVABLE[self.name]
        assert type(error) is expected_type, f"got {error!r}"
        assert isinstance(error, BaseException)
        cause = error.__cause__
        assert isinstance(cause, anypool.RemoteTraceback)
        assert "Traceback (most recent call last):" in str(cause)
        assert frame in str(cause)
        assert expected_type.__name__ in str(cause)
        assert not dead(self.pid), "the worker died of an exception it should survive"
        if contract().owns_workers:
            assert self.pid in pool_processes()

    async def assert_outcome(self, error: object, during: str) -> None:
        if self.name in DEATHS:
            await self.assert_broken_worker_error(error, during)
        else:
            self.assert_delivered_as_itself(error)


async def assert_pool_recovered(pool: anypool.Pool, fault: Fault, *, failed: int | None) -> None:
    """Nothing is left running, the worker was replaced only if it died (a count of the local
    pool's: Ray's workers are Ray's), the pool serves the next call (on another worker if the
    faulty one died)."""
    stats = pool.stats()
    assert stats.calls_running == 0
    if contract().owns_workers:
        assert stats.workers_busy == 0
        assert stats.workers_replaced == (1 if fault.name in DEATHS else 0)
    if failed is not None:
        assert stats.calls_failed == failed
    assert await pool.run(workers.square, 7) == 49
    if fault.name in DEATHS:
        assert await pool.run(workers.current_pid) != fault.pid


# --- workers dying, or raising MemoryError / RecursionError ----------------------------------
#
# A pool of two: a bystander call holds one worker throughout (``bystander_call`` checks that it
# completes normally, on a worker that is still alive), the call under test gets the other.


@pytest.mark.parametrize("fault_name", FAULTS)
async def test_run_fault_fails_only_that_call(fault_name: str, tmp_path) -> None:
    fault = Fault(fault_name, tmp_path)

    async def consume(received: list[object]) -> None:
        received.append(await pool.run(workers.meet_fault, fault.name, fault.pid_file))

    async with contract_pool(2, **where_local(kill_grace=KILL_GRACE)) as pool:
        async with bystander_call(pool, tmp_path) as bystander_pid:
            await fault.provoke(consume)
            assert fault.pid != bystander_pid
            assert fault.received == []
            await fault.assert_outcome(fault.error, "during the call to meet_fault")
        await assert_pool_recovered(pool, fault, failed=1)


@pytest.mark.parametrize("fault_name", FAULTS)
async def test_map_fault_is_raised_after_the_results_before_it(fault_name: str, tmp_path) -> None:
    fault = Fault(fault_name, tmp_path)
    items = [(workers.identity, "before"), (workers.meet_fault, fault.name, fault.pid_file)]

    async def consume(received: list[object]) -> None:
        async with pool.map(workers.apply, items) as results:
            async for result in results:
                received.append(result)

    async with contract_pool(2, **where_local(kill_grace=KILL_GRACE)) as pool:
        async with bystander_call(pool, tmp_path) as bystander_pid:
            await fault.provoke(consume)
            assert fault.pid != bystander_pid
            assert fault.received == ["before"]
            # Errors name the function mapped.
            await fault.assert_outcome(fault.error, "during the call to apply")
        # An item's exception fails the item, not the worker's call: only a death counts.
        await assert_pool_recovered(pool, fault, failed=1 if fault.name in DEATHS else 0)


@pytest.mark.parametrize("fault_name", FAULTS)
async def test_map_fault_with_return_exceptions_takes_its_items_place(
    fault_name: str, tmp_path
) -> None:
    fault = Fault(fault_name, tmp_path)
    items = [
        (workers.identity, "before"),
        (workers.meet_fault, fault.name, fault.pid_file),
        (workers.identity, "after"),
    ]

    async def consume(received: list[object]) -> None:
        async with pool.map(workers.apply, items, return_exceptions=True) as results:
            async for result in results:
                received.append(result)

    async with contract_pool(2, **where_local(kill_grace=KILL_GRACE)) as pool:
        async with bystander_call(pool, tmp_path) as bystander_pid:
            await fault.provoke(consume)
            assert fault.error is None
            assert fault.pid != bystander_pid
            before, error, after = fault.received
            assert (before, after) == ("before", "after")
            await fault.assert_outcome(error, "during the call to apply")
        await assert_pool_recovered(pool, fault, failed=1 if fault.name in DEATHS else 0)


@pytest.mark.needs(Feature.STREAM)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault_name", FAULTS)
async def test_stream_fault_is_raised_after_the_items_before_it(
    fault_name: str, kind: str, tmp_path
) -> None:
    fault = Fault(fault_name, tmp_path)
    fn = workers.yield_then_meet_fault if kind == "sync" else workers.async_yield_then_meet_fault

    async def consume(received: list[object]) -> None:
        async with pool.stream(fn, ["first", "second"], fault.name, fault.pid_file) as items:
            async for item in items:
                received.append(item)

    async with contract_pool(2, **where_local(kill_grace=KILL_GRACE)) as pool:
        async with bystander_call(pool, tmp_path) as bystander_pid:
            await fault.provoke(consume)
            assert fault.pid != bystander_pid
            if fault.name in DEATHS:
                assert_items_before_a_crash(fault.received, ["first", "second"])
            else:
                assert fault.received == ["first", "second"]
            await fault.assert_outcome(fault.error, f"during the stream of {fn.__name__}")
        await assert_pool_recovered(pool, fault, failed=1)


# --- workers that resist SIGTERM when their call is cancelled --------------------------------
#
# "swallow": a SIGTERM handler that notes the signal and returns, so the call goes on;
# "loop": a SIGTERM handler that notes it and never returns. Either way only SIGKILL, sent
# kill_grace after SIGTERM, ends the worker. The handler's note proves SIGTERM came first.

RESISTANCE = ["swallow", "loop"]


def assert_killed_after_resisting_sigterm(
    pool: anypool.Pool, pid: int, marker: Path, elapsed: float, *, sigterm: bool = True
) -> None:
    assert gone(pid), f"worker {pid} still exists after the cancellation returned"
    # A stream's generator gets GeneratorExit, not SIGTERM, as its chance to finish.
    assert marker.exists() == sigterm, "SIGTERM before the SIGKILL" if sigterm else "no SIGTERM"
    assert KILL_GRACE * 0.8 <= elapsed < KILL_GRACE + MARGIN, f"took {elapsed:.2f} s"
    stats = pool.stats()
    assert (stats.calls_running, stats.workers_busy) == (0, 0)
    assert stats.calls_cancelled == 1
    assert stats.workers_replaced == 1


# SIGTERM, then SIGKILL after kill_grace: the local pool's own (Ray kills at once).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize("how", RESISTANCE)
async def test_run_cancelled_kills_a_worker_resisting_sigterm_after_kill_grace(
    how: str, tmp_path
) -> None:
    pid_file, marker = tmp_path / "pid", tmp_path / "got-sigterm"
    async with contract_pool(1, kill_grace=KILL_GRACE) as pool:
        async with anyio.create_task_group() as group:
            group.start_soon(pool.run, workers.resist_sigterm_and_wait, how, pid_file, marker)
            pid = await read_pid(pid_file)
            started = time.monotonic()
            group.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        assert_killed_after_resisting_sigterm(pool, pid, marker, elapsed)
        assert await pool.run(workers.square, 4) == 16


# SIGTERM, then SIGKILL after kill_grace: the local pool's own (Ray kills at once).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize(
    ("how", "leave"),
    [("swallow", "break"), ("loop", "cancel")],
    ids=["swallow-break", "loop-cancel"],
)
async def test_map_left_early_kills_a_worker_resisting_sigterm_after_kill_grace(
    how: str, leave: str, tmp_path
) -> None:
    pid_file, marker = tmp_path / "pid", tmp_path / "got-sigterm"
    items = [(workers.identity, "done"), (workers.resist_sigterm_and_wait, how, pid_file, marker)]
    async with contract_pool(2, kill_grace=KILL_GRACE) as pool:
        with anyio.CancelScope() as scope:
            async with pool.map(workers.apply, items) as results:
                async for result in results:
                    assert result == "done"
                    pid = await read_pid(pid_file)
                    started = time.monotonic()
                    if leave == "break":
                        break
                    scope.cancel()
                    await anyio.sleep_forever()
        elapsed = time.monotonic() - started
        assert scope.cancelled_caught == (leave == "cancel")
        assert_killed_after_resisting_sigterm(pool, pid, marker, elapsed)
        assert await pool.run(workers.square, 4) == 16


# SIGKILL after kill_grace, for a generator too busy to take its GeneratorExit: the local
# pool's own (on Ray, a consumer that leaves kills the generator's process at once).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize(
    ("how", "leave"),
    [("swallow", "cancel"), ("loop", "break")],
    ids=["swallow-cancel", "loop-break"],
)
async def test_stream_left_early_kills_a_busy_worker_after_kill_grace(
    how: str, leave: str, tmp_path
) -> None:
    # The generator is busy (past its yield: it touched ``busy``) when the consumer leaves, so
    # it cannot take the request to close (its GeneratorExit): once kill_grace has passed the
    # worker gets SIGKILL, with no second grace for a SIGTERM.
    marker, busy = tmp_path / "got-sigterm", tmp_path / "busy"
    fn = workers.yield_pid_resisting_sigterm
    async with contract_pool(1, kill_grace=KILL_GRACE) as pool:
        with anyio.CancelScope() as scope:
            async with pool.stream(fn, how, marker, busy) as items:
                async for item in items:
                    pid = item
                    assert await wait_until_async(busy.exists), "the generator never went on"
                    started = time.monotonic()
                    if leave == "break":
                        break
                    scope.cancel()
                    await anyio.sleep_forever()
        elapsed = time.monotonic() - started
        assert scope.cancelled_caught == (leave == "cancel")
        assert_killed_after_resisting_sigterm(pool, pid, marker, elapsed, sigterm=False)
        assert await pool.run(workers.square, 4) == 16


# --- stream generators that ignore GeneratorExit ---------------------------------------------


# GeneratorExit, and kill_grace after it: the local pool's own (on Ray, a consumer that leaves
# kills the generator's process at once: test_stream.py checks that).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize("leave", ["break", "cancel"])
@pytest.mark.parametrize("kind", KINDS)
async def test_stream_generator_sleeping_through_generator_exit_is_killed_after_kill_grace(
    kind: str, leave: str, tmp_path
) -> None:
    marker = tmp_path / "got-generator-exit"
    fn = (
        workers.yield_pid_ignoring_generator_exit
        if kind == "sync"
        else workers.async_yield_pid_ignoring_generator_exit
    )
    async with contract_pool(1, kill_grace=KILL_GRACE) as pool:
        with anyio.CancelScope() as scope:
            async with pool.stream(fn, marker, "sleep") as items:
                async for item in items:
                    pid = item
                    started = time.monotonic()
                    if leave == "break":
                        break
                    scope.cancel()
                    await anyio.sleep_forever()
        elapsed = time.monotonic() - started
        assert gone(pid), f"worker {pid} still exists after the consumer left"
        assert marker.exists(), "GeneratorExit never reached the generator"
        assert KILL_GRACE * 0.8 <= elapsed < KILL_GRACE + MARGIN, f"took {elapsed:.2f} s"
        stats = pool.stats()
        assert (stats.calls_running, stats.workers_busy) == (0, 0)
        assert (stats.calls_cancelled, stats.workers_replaced) == (1, 1)
        assert await pool.run(workers.current_pid) != pid


# GeneratorExit, and the worker kept: the local pool's own (Ray sends no GeneratorExit: a
# consumer that leaves kills the generator's process at once, as test_stream.py checks).
@pytest.mark.backends("local")
@pytest.mark.timing
@pytest.mark.parametrize("kind", KINDS)
async def test_stream_generator_yielding_after_generator_exit_is_closed_and_keeps_its_worker(
    kind: str, tmp_path
) -> None:
    # Python refuses the yield (close() raises "RuntimeError: generator ignored GeneratorExit"
    # in the worker): the generator is done with, nothing hangs, the worker is kept.
    marker = tmp_path / "got-generator-exit"
    fn = (
        workers.yield_pid_ignoring_generator_exit
        if kind == "sync"
        else workers.async_yield_pid_ignoring_generator_exit
    )
    async with contract_pool(1, kill_grace=KILL_GRACE) as pool:
        async with pool.stream(fn, marker, "yield") as items:
            async for item in items:
                pid = item
                started = time.monotonic()
                break
        elapsed = time.monotonic() - started
        assert marker.exists(), "GeneratorExit never reached the generator"
        assert elapsed < KILL_GRACE, f"took {elapsed:.2f} s"
        stats = pool.stats()
        assert (stats.calls_running, stats.workers_busy) == (0, 0)
        assert (stats.calls_cancelled, stats.workers_replaced) == (1, 0)
        assert await pool.run(workers.current_pid) == pid
