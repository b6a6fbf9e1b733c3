"""What the caller sees when a call fails: the function's own exception with its remote
traceback, a RemoteError, a BrokenWorkerError, a SerializationError, an InitializerError; and
the pool serves the next call."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import traceback

import anyio
import psutil
import pytest

import anypool
import workers
from anypool.backends import Feature
from anypool.backends.local.workers import FIRST_START_DELAY
from support import (
    assert_pool_serves,
    contract,
    contract_pool,
    gone,
    killed,
    pool_processes,
    read_pid,
    run_script,
    stays_true,
    write_script,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("contract_backend")]

WORKERS_FILE = os.path.basename(workers.__file__)
# Enough worker deaths to catch a race on the exit status (without the fix, most runs lose one).
DEATHS_UNDER_POLLING = 10
POLL_INTERVAL = 0.0001


# --- the function's exception ---------------------------------------------------------------


async def test_exception_keeps_its_type_and_message() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(ValueError, match=r"^bad value$") as info:
            await pool.run(workers.raise_value_error, "bad value")
    assert type(info.value) is ValueError
    assert info.value.args == ("bad value",)


async def test_exception_keeps_its_custom_type_and_attributes() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(workers.CustomError) as info:
            await pool.run(workers.raise_custom_error, 42, "no answer")
    assert info.value.args == (42, "no answer")
    assert (info.value.code, info.value.detail) == (42, "no answer")


async def test_exception_cause_is_the_remote_traceback() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(ValueError, match="bad value") as info:
            await pool.run(workers.raise_value_error, "bad value")
    cause = info.value.__cause__
    assert isinstance(cause, anypool.RemoteTraceback)
    text = str(cause)
    assert "Traceback (most recent call last):" in text
    assert "raise_value_error" in text
    assert WORKERS_FILE in text
    assert "line " in text
    assert "ValueError: bad value" in text


def frames_after_the_caller(error: BaseException) -> list[str]:
    """The functions of ``error``'s traceback after this test's own frame."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [index for index, frame in enumerate(frames) if frame.filename == __file__]
    return [frame.name for frame in frames[ours[-1] + 1 :]]


async def test_the_callers_traceback_shows_its_own_frames_then_one_re_raise() -> None:
    # Between the caller's line and the worker's traceback (the cause), no frame of anypool's
    # machinery: the line that re-raises it, in the method the caller called.
    async with contract_pool(1) as pool:
        with pytest.raises(ValueError, match="bad value") as info:
            await pool.run(workers.raise_value_error, "bad value")
        assert frames_after_the_caller(info.value) == ["run"]
        with pytest.raises(ValueError, match="bad value") as info:
            async for _ in pool.map(workers.raise_value_error, ["bad value"]):
                pass
        # (A map's `async for` iterates the async generator its __aiter__ returns.)
        assert frames_after_the_caller(info.value) == ["__aiter__"]
        if Feature.STREAM not in contract().unsupported:
            with pytest.raises(workers.QuotaError) as info:
                async for _ in pool.stream(workers.yield_then_raise_quota_error, "u", 1):
                    pass
            assert frames_after_the_caller(info.value) == ["__anext__"]
        assert isinstance(info.value.__cause__, anypool.RemoteTraceback)


async def test_exception_from_a_lambda_names_the_lambda_in_the_remote_traceback() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(ZeroDivisionError) as info:
            await pool.run(lambda: 1 / 0)
    assert "<lambda>" in str(info.value.__cause__)


async def test_pool_serves_the_next_call_on_the_same_worker_after_an_exception() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(ValueError, match="bad value"):
            await pool.run(workers.raise_value_error, "bad value")
        await assert_pool_serves(pool, pid)


# --- exceptions that cannot travel as themselves --------------------------------------------


@pytest.mark.parametrize(
    ("function", "type_name", "message"),
    [
        (workers.raise_unpicklable_error, "workers.UnpicklableError", "holds a lock"),
        (workers.raise_unreducible_error, "workers.UnreducibleError", "refuses pickling"),
    ],
    ids=["holds-a-lock", "reduce-raises"],
)
async def test_exception_that_cannot_be_delivered_becomes_remote_error(
    function, type_name: str, message: str
) -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.RemoteError) as info:
            await pool.run(function)
        error = info.value
        assert error.type_name == type_name
        assert error.message == message
        assert function.__name__ in error.traceback
        assert "Traceback (most recent call last):" in error.traceback
        assert isinstance(error.__cause__, anypool.RemoteTraceback)
        assert await pool.run(workers.square, 2) == 4


async def test_exception_whose_init_takes_more_than_its_message_keeps_its_type_and_state() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(workers.QuotaError) as info:
            await pool.run(workers.raise_quota_error, "ann", 12)
        assert_is_the_quota_error(info.value, "ann", 12)
        with pytest.raises(workers.UnbuildableError, match=r"^this and that$"):
            await pool.run(workers.raise_unbuildable_error)


def assert_is_the_quota_error(error: BaseException, user: str, used: int) -> None:
    """``error`` is the QuotaError raised in the worker, rebuilt whole without its __init__."""
    assert type(error) is workers.QuotaError
    assert error.args == (f"{user} is over quota",)
    assert (error.user, error.used) == (user, used)
    assert error.__notes__ == [f"{used} units used"]
    assert isinstance(error.__cause__, anypool.RemoteTraceback)
    assert "_quota_error" in str(error.__cause__)


async def test_exception_whose_init_takes_more_than_its_message_keeps_its_type_in_a_map() -> None:
    async with contract_pool(2) as pool:
        results = pool.map(
            workers.raise_quota_error_for_negative, [1, -5, 2], return_exceptions=True
        )
        received = [result async for result in results]
    assert received[0::2] == [1, 4]
    assert_is_the_quota_error(received[1], "item", -5)


@pytest.mark.needs(Feature.STREAM)
async def test_exception_whose_init_takes_more_than_its_message_keeps_its_type_in_a_stream() -> (
    None
):
    received: list[object] = []

    async def consume(pool: anypool.Pool) -> None:
        async for item in pool.stream(workers.yield_then_raise_quota_error, "bo", 3):
            received.append(item)

    async with contract_pool(1) as pool:
        with pytest.raises(workers.QuotaError) as info:
            await consume(pool)
    assert received == [1]
    assert_is_the_quota_error(info.value, "bo", 3)


@pytest.mark.needs(Feature.CHANNEL)
async def test_exception_whose_init_takes_more_than_its_message_keeps_its_type_in_a_channel() -> (
    None
):

    async def talk(pool: anypool.Pool) -> None:
        async with pool.open_channel(workers.channel_raise_quota_error, "cy", 7) as channel:
            await channel.send("go")
            await channel.receive()

    async with contract_pool(1) as pool:
        with pytest.raises(workers.QuotaError) as info:
            await talk(pool)
    assert_is_the_quota_error(info.value, "cy", 7)


async def test_exception_whose_type_the_parent_cannot_import_becomes_remote_error(
    tmp_path,
) -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.RemoteError) as info:
            await pool.run(workers.raise_error_of_a_module_only_the_worker_has, tmp_path)
    assert info.value.type_name == "only_in_the_worker.WorkerOnlyError"
    assert info.value.message == "from a module the parent lacks"
    assert isinstance(info.value.__cause__, anypool.RemoteTraceback)


async def test_sys_exit_in_the_function_becomes_remote_error_and_the_parent_lives_on() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.RemoteError) as info:
            await pool.run(workers.exit_with, 3)
        assert info.value.type_name == "SystemExit"
        assert info.value.message == "3"
        assert "exit_with" in info.value.traceback
        assert await pool.run(workers.square, 2) == 4


async def test_keyboard_interrupt_in_the_function_becomes_remote_error() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.RemoteError) as info:
            await pool.run(workers.raise_keyboard_interrupt)
        assert info.value.type_name == "KeyboardInterrupt"
        assert await pool.run(workers.square, 2) == 4


# --- workers that die -----------------------------------------------------------------------


async def test_worker_exiting_during_a_call_raises_broken_worker_error() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(anypool.BrokenWorkerError) as info:
            await pool.run(workers.exit_immediately, 3)
        error = info.value
        assert isinstance(error, RuntimeError)
        assert "exit_immediately" in str(error)
        if contract().reports_exits:
            assert (error.exitcode, error.signal_name) == (3, None)
            assert error.pid is not None
            assert str(error.pid) in str(error)
            assert "3" in str(error).replace(str(error.pid), "")
            # (On Dask, the call may run in another worker's process than pid's.)
            assert error.pid == pid or not contract().owns_workers
        else:
            assert (error.pid, error.exitcode, error.signal_name) == (None, None, None)
        if contract().owns_workers:
            assert gone(pid)
            assert await pool.run(workers.current_pid) != pid
        else:
            # (The call that died may have run in another of Ray's processes than pid.)
            assert await pool.run(workers.square, 5) == 25


async def test_worker_killed_from_outside_raises_broken_worker_error(tmp_path) -> None:
    async with contract_pool(1) as pool:
        outcome: list[anypool.BrokenWorkerError] = []

        async def call() -> None:
            try:
                await pool.run(workers.write_pid_and_sleep, tmp_path / "pid", 60)
            except anypool.BrokenWorkerError as error:
                outcome.append(error)

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            pid = await read_pid(tmp_path / "pid")
            os.kill(pid, signal.SIGKILL)
        [error] = outcome
        if contract().reports_exits:
            expected = (pid, -signal.SIGKILL, "SIGKILL")
            assert (error.pid, error.exitcode, error.signal_name) == expected
            assert str(pid) in str(error)
            assert "SIGKILL" in str(error)
        else:
            assert (error.pid, error.exitcode, error.signal_name) == (None, None, None)
        assert "write_pid_and_sleep" in str(error)
        assert await killed(pid)
        assert await pool.run(workers.square, 5) == 25


async def test_worker_crashing_with_a_segfault_raises_broken_worker_error() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(anypool.BrokenWorkerError) as info:
            await pool.run(workers.crash_with_segfault)
        error = info.value
        assert "crash_with_segfault" in str(error)
        if contract().reports_exits:
            expected = (pid, -signal.SIGSEGV, "SIGSEGV")
            assert (error.pid, error.exitcode, error.signal_name) == expected
            assert "SIGSEGV" in str(error)
        else:
            assert (error.pid, error.exitcode, error.signal_name) == (None, None, None)
        if contract().owns_workers:
            assert gone(pid)
        assert await pool.run(workers.square, 5) == 25


async def test_broken_worker_error_is_counted_and_the_worker_replaced() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.BrokenWorkerError):
            await pool.run(workers.exit_immediately, 3)
        stats = pool.stats()
        assert (stats.calls_running, stats.calls_failed) == (0, 1)
        if contract().owns_workers:
            assert (stats.workers_replaced, stats.workers_alive) == (1, 0)
        assert await pool.run(workers.square, 5) == 25


# --- serialization --------------------------------------------------------------------------


async def test_unpicklable_argument_raises_serialization_error_naming_it() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.SerializationError) as info:
            await pool.run(workers.identity, threading.Lock())
    error = info.value
    assert isinstance(error, TypeError)
    assert isinstance(error, pickle.PicklingError)
    message = str(error)
    assert "argument" in message
    assert "_thread.lock" in message
    assert "identity" in message


async def test_unpicklable_keyword_argument_raises_serialization_error_naming_it() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.SerializationError) as info:
            await pool.run(workers.keyword_arguments, fine=1, x=threading.Lock())
    assert "keyword argument 'x'" in str(info.value)
    assert "_thread.lock" in str(info.value)


async def test_unpicklable_argument_keeps_the_worker() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(anypool.SerializationError):
            await pool.run(workers.identity, threading.Lock())
        await assert_pool_serves(pool, pid)


async def test_unpicklable_result_raises_serialization_error_and_keeps_the_worker() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(anypool.SerializationError) as info:
            await pool.run(workers.return_lock)
        assert isinstance(info.value, TypeError)
        assert "the result of return_lock" in str(info.value)
        assert "_thread.lock" in str(info.value)
        await assert_pool_serves(pool, pid)


async def test_result_that_cannot_be_unpickled_raises_serialization_error() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(anypool.SerializationError) as info:
            await pool.run(workers.return_unloadable_result)
        assert "return_unloadable_result" in str(info.value)
        await assert_pool_serves(pool, pid)


# --- initializer ----------------------------------------------------------------------------


@pytest.mark.backends("local")
async def test_failing_initializer_raises_initializer_error_with_the_cause_chain() -> None:
    async with contract_pool(1, initializer=workers.failing_initializer) as pool:
        with pytest.raises(anypool.InitializerError) as info:
            await pool.run(workers.square, 2)
    assert isinstance(info.value, RuntimeError)
    cause = info.value.__cause__
    assert type(cause) is ValueError
    assert cause.args == ("the initializer cannot start",)
    remote = cause.__cause__
    assert isinstance(remote, anypool.RemoteTraceback)
    assert "failing_initializer" in str(remote)
    assert WORKERS_FILE in str(remote)


@pytest.mark.backends("local")
async def test_failing_initializer_does_not_respawn_workers_in_a_loop() -> None:
    async with contract_pool(2, initializer=workers.failing_initializer) as pool:
        with pytest.raises(anypool.InitializerError):
            await pool.run(workers.square, 2)
        stats = pool.stats()
        assert stats.workers_alive == 0
        assert stats.initializer_failures == 1
        assert 0 < stats.worker_start_delay <= FIRST_START_DELAY
        assert await stays_true(lambda: pool_processes() == set(), duration=0.3)
        # A new call tries again, in a new worker.
        with pytest.raises(anypool.InitializerError):
            await pool.run(workers.square, 2)
        stats = pool.stats()
        assert stats.calls_failed == 2
        assert stats.initializer_failures == 2
        assert await stays_true(lambda: pool_processes() == set(), duration=0.3)


@pytest.mark.backends("local")
async def test_failing_initializer_backs_off_each_new_worker_longer() -> None:
    started = anyio.current_time()
    async with contract_pool(1, initializer=workers.failing_initializer) as pool:
        for _ in range(4):
            with pytest.raises(anypool.InitializerError):
                await pool.run(workers.square, 2)
        stats = pool.stats()
    # The 2nd, 3rd and 4th workers waited 0.1, 0.2 and 0.4 seconds before they started.
    assert anyio.current_time() - started >= FIRST_START_DELAY * (1 + 2 + 4)
    assert stats.initializer_failures == 4
    assert stats.worker_start_delay <= FIRST_START_DELAY * 8


@pytest.mark.backends("local")
async def test_a_call_waiting_out_the_back_off_can_be_cancelled() -> None:
    async with contract_pool(1, initializer=workers.failing_initializer) as pool:
        for _ in range(3):
            with pytest.raises(anypool.InitializerError):
                await pool.run(workers.square, 2)
        with anyio.move_on_after(0.05) as scope:
            await pool.run(workers.square, 2)
        assert scope.cancelled_caught
        assert pool.stats().calls_running == 0
        assert pool_processes() == set()


@pytest.mark.backends("local")
async def test_a_hanging_initializer_holds_its_call_until_the_callers_deadline_kills_it(
    tmp_path,
) -> None:
    pid_path = tmp_path / "pid"
    async with contract_pool(
        1, initializer=workers.hanging_initializer, initargs=(pid_path,), kill_grace=0.5
    ) as pool:
        with anyio.move_on_after(10) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.run, workers.square, 2)
                pid = await read_pid(pid_path)
                group.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert gone(pid)
        stats = pool.stats()
        assert (stats.calls_running, stats.calls_cancelled, stats.workers_alive) == (0, 1, 0)


@pytest.mark.backends("local")
async def test_back_off_ends_once_a_worker_runs_a_call(tmp_path) -> None:
    counter = tmp_path / "initializer-runs"
    async with contract_pool(
        1, initializer=workers.initializer_failing_times, initargs=(counter, 2)
    ) as pool:
        for _ in range(2):
            with pytest.raises(anypool.InitializerError, match="initializer raised"):
                await pool.run(workers.square, 2)
        assert await pool.run(workers.square, 3) == 9
        stats = pool.stats()
    assert (stats.initializer_failures, stats.worker_start_delay) == (0, 0.0)


# --- closed pool ----------------------------------------------------------------------------


async def test_run_on_a_closed_pool_raises_pool_closed_error() -> None:
    async with contract_pool(1) as pool:
        pass
    with pytest.raises(anypool.PoolClosedError, match="closed") as info:
        await pool.run(workers.square, 2)
    assert isinstance(info.value, RuntimeError)


async def test_errors_do_not_leave_worker_processes_behind() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(anypool.BrokenWorkerError):
            await pool.run(workers.exit_immediately, 3)
        with pytest.raises(ValueError, match="bad"):
            await pool.run(workers.raise_value_error, "bad")
        pid = await pool.run(workers.current_pid)
        # (A backend whose worker processes are not its own leaves none of its own.)
        assert pool_processes() == ({pid} if contract().owns_workers else set())
    if contract().owns_workers:
        assert not psutil.pid_exists(pid)
    assert pool_processes() == set()


@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
async def test_broken_worker_error_reports_the_exit_code_under_every_start_method(
    start_method: str,
) -> None:
    async with contract_pool(1, start_method=start_method) as pool:
        pid = await pool.run(workers.current_pid)
        with pytest.raises(anypool.BrokenWorkerError) as info:
            await pool.run(workers.exit_immediately, 7)
        assert (info.value.pid, info.value.exitcode) == (pid, 7)
        assert gone(pid)
        assert await pool.run(workers.square, 5) == 25


# (spawn reads exit statuses as fork does, and its workers are slow to start.)
@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", ["forkserver", "fork"])
async def test_exit_codes_survive_a_thread_polling_multiprocessing_children(
    start_method: str,
) -> None:
    # multiprocessing reads a child's exit status when anyone polls it, from any thread: a
    # thread that starts a process (Process.start() polls them all) or calls active_children().
    # The pool's workers are its own, so such a thread neither lists them nor takes their status.
    stop = threading.Event()

    def poll_children() -> None:
        while not stop.wait(POLL_INTERVAL):
            multiprocessing.active_children()

    poller = threading.Thread(target=poll_children)
    poller.start()
    try:
        async with contract_pool(2, start_method=start_method) as pool:
            for _ in range(DEATHS_UNDER_POLLING):
                with pytest.raises(anypool.BrokenWorkerError) as info:
                    await pool.run(workers.exit_immediately, 7)
                assert info.value.exitcode == 7
                assert not set(pool_processes()) & {
                    child.pid for child in multiprocessing.active_children()
                }
    finally:
        stop.set()
        poller.join()


UNGUARDED_SCRIPT = """
    import anyio

    import anypool


    async def main():
        async with anypool.Pool(1, start_method=START_METHOD) as pool:
            try:
                print("result:", await pool.run(abs, -1))
            except anypool.BrokenWorkerError as error:
                print("caught:", error)


    anyio.run(main)  # no `if __name__ == "__main__":` guard
"""


@pytest.mark.backends("local")
def test_a_script_without_a_main_guard_is_told_what_to_add_under_spawn(tmp_path) -> None:
    code = UNGUARDED_SCRIPT.replace("START_METHOD", repr("spawn"))
    output = run_script(write_script(tmp_path, code)).stdout
    assert "exited with code 1 during the call to abs" in output
    assert 'needs an `if __name__ == "__main__":` guard' in output


@pytest.mark.backends("local")
def test_a_script_without_a_main_guard_runs_under_the_forkserver(tmp_path) -> None:
    # anypool's fork server never runs the main module: its workers get what it defines by
    # value.
    code = UNGUARDED_SCRIPT.replace("START_METHOD", repr("forkserver"))
    output = run_script(write_script(tmp_path, code))
    assert output.stdout == "result: 1\n"
    assert output.stderr == ""
