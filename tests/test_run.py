"""pool.run: what it returns, where calls run, and how workers are started, reused and retired."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
from typing import Any

import anyio
import psutil
import pytest
import sniffio

import anypool
import anypool.backends.local.transport
import workers
from anypool.backends.local import framing, wire
from support import (
    contract,
    contract_pool,
    descendants,
    gone,
    pool_processes,
    read_pid,
    run_module,
    run_script,
    stand_in_worker,
    wait_until_async,
    write_script,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("contract_backend")]


async def test_run_returns_the_result_of_the_function() -> None:
    async with contract_pool(1) as pool:
        assert await pool.run(workers.square, 12) == 144


async def test_run_passes_positional_and_keyword_arguments() -> None:
    async with contract_pool(1) as pool:
        assert await pool.run(workers.combine, 2, 3, scale=10, offset=1) == 51


async def test_run_calls_the_function_in_another_process() -> None:
    async with contract_pool(1) as pool:
        pid = await pool.run(os.getpid)
    assert pid != os.getpid()


async def test_run_accepts_a_lambda() -> None:
    async with contract_pool(1) as pool:
        assert await pool.run(lambda x, y: x * y + 1, 6, 7) == 43


async def test_run_accepts_a_closure() -> None:
    greeting = "hello"

    def greet(name: str) -> str:
        return f"{greeting}, {name}"

    async with contract_pool(1) as pool:
        assert await pool.run(greet, "worker") == "hello, worker"


async def test_async_function_runs_on_the_callers_kind_of_event_loop() -> None:
    # asyncio and uvloop callers get asyncio in the worker; trio callers get trio.
    expected = "trio" if sniffio.current_async_library() == "trio" else "asyncio"
    async with contract_pool(1) as pool:
        assert await pool.run(workers.running_event_loop) == expected


async def test_async_lambda_result_is_returned() -> None:
    async def double(x: int) -> int:
        return 2 * x

    async with contract_pool(1) as pool:
        assert await pool.run(double, 21) == 42


@pytest.mark.backends("local")
async def test_no_worker_starts_before_the_first_call() -> None:
    async with contract_pool(2) as pool:
        assert pool.stats().workers_alive == 0
        assert descendants() == {}
        await pool.run(workers.current_pid)
        assert pool.stats().workers_alive == 1


@pytest.mark.backends("local")
async def test_sequential_calls_reuse_the_same_worker() -> None:
    async with contract_pool(2) as pool:
        pids = [await pool.run(workers.current_pid) for _ in range(5)]
    assert len(set(pids)) == 1


@pytest.mark.backends("local")
async def test_each_call_reads_its_workers_pipe_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The standard library's loops run the reader callback of a select() that saw a result
    # still unread after the task that then read it; that task has sent its next call and
    # waits again by then, and the stale callback must not wake it for an empty read.
    reads = 0
    receive_into = anypool.backends.local.transport.receive_into

    def counted(*args: Any) -> int:
        nonlocal reads
        reads += 1
        return receive_into(*args)

    async with contract_pool(1) as pool:
        await pool.run(workers.current_pid)
        monkeypatch.setattr(anypool.backends.local.transport, "receive_into", counted)
        for _ in range(50):
            await pool.run(workers.current_pid)
        assert reads == 50


@pytest.mark.backends("local")
async def test_most_recently_used_idle_worker_serves_the_next_call(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with contract_pool(2) as pool:
        async with anyio.create_task_group() as group:
            # Two workers, both idle afterwards.
            group.start_soon(pool.run, workers.meet, first, second)
            group.start_soon(pool.run, workers.meet, second, first)
        assert pool.stats().workers_idle == 2
        pids = [await pool.run(workers.current_pid) for _ in range(4)]
    # Each call leaves its worker the most recently used: the other one stays idle.
    assert len(set(pids)) == 1


async def test_concurrent_calls_run_in_parallel_on_distinct_workers(tmp_path) -> None:
    # Each call waits for the other's marker: both return only if they run at the same time.
    first, second = tmp_path / "first", tmp_path / "second"
    pids: list[int] = []

    async def meet(own: object, other: object) -> None:
        pids.append(await pool.run(workers.meet, own, other))

    async with contract_pool(2) as pool, anyio.create_task_group() as group:
        group.start_soon(meet, first, second)
        group.start_soon(meet, second, first)
    assert len(set(pids)) == 2


async def test_calls_beyond_max_workers_wait_for_a_free_worker(tmp_path) -> None:
    release = tmp_path / "release"
    results: list[int] = []

    async def hold(index: int) -> None:
        results.append(
            await pool.run(workers.write_pid_and_wait_for, tmp_path / f"{index}.pid", release)
        )

    def started() -> int:
        return len(list(tmp_path.glob("*.pid")))

    async with contract_pool(2) as pool, anyio.create_task_group() as group:
        for index in range(3):
            group.start_soon(hold, index)
        assert await wait_until_async(lambda: started() == 2, timeout=20)
        stats = pool.stats()
        assert (stats.calls_running, stats.calls_waiting) == (2, 1)
        if contract().owns_workers:
            assert await wait_until_async(lambda: pool.stats().workers_busy == 2)
            assert pool.stats().workers_alive == 2
            assert len(pool_processes()) == 2
        assert started() == 2
        release.touch()
    assert len(results) == 3
    if contract().owns_workers:
        assert len(set(results)) == 2


@pytest.mark.backends("local")
async def test_max_tasks_per_worker_replaces_the_worker_after_that_many_calls() -> None:
    async with contract_pool(1, max_tasks_per_worker=2) as pool:
        pids = [await pool.run(workers.current_pid) for _ in range(5)]
        assert pool.stats().workers_replaced == 2
    assert pids[0] == pids[1]
    assert pids[2] == pids[3]
    assert pids[4] not in pids[:4]
    assert pids[2] != pids[0]


@pytest.mark.backends("local")
async def test_idle_timeout_retires_an_idle_worker_and_the_next_call_is_served() -> None:
    async with contract_pool(1, idle_timeout=0.3) as pool:
        first = await pool.run(workers.current_pid)
        assert await wait_until_async(lambda: pool.stats().workers_alive == 0)
        assert await wait_until_async(lambda: gone(first))
        second = await pool.run(workers.current_pid)
    assert second != first


@pytest.mark.backends("local")
async def test_idle_timeout_does_not_retire_a_busy_worker() -> None:
    async with contract_pool(1, idle_timeout=0.2) as pool:
        pid, value = await pool.run(lambda: (os.getpid(), workers.sleep_then_return(0.6, "done")))
        assert value == "done"
        assert not gone(pid)


@pytest.mark.backends("local")
async def test_a_worker_sleeps_once_calls_stop_coming_back_to_back() -> None:
    # While calls come back to back a worker polls for the next one a moment before it sleeps;
    # once none comes, it must not go on using the CPU.
    async with contract_pool(1) as pool:
        for _ in range(50):
            pid = await pool.run(workers.current_pid)
        worker = psutil.Process(pid)
        await anyio.sleep(0.1)
        before = sum(worker.cpu_times()[:2])
        await anyio.sleep(0.5)
        assert sum(worker.cpu_times()[:2]) - before < 0.05


@pytest.mark.backends("local")
async def test_initializer_runs_once_in_each_worker_before_its_first_call(tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    async with contract_pool(2, initializer=workers.initialize, initargs=("ready",)) as pool:
        states = [await pool.run(workers.initialization_state) for _ in range(3)]
        async with anyio.create_task_group() as group:
            # Two calls at once: the second worker is initialized too.
            group.start_soon(pool.run, workers.meet, first, second)
            group.start_soon(pool.run, workers.meet, second, first)
        states += [await pool.run(workers.initialization_state) for _ in range(2)]
    assert states[0] == ("ready", 1, states[0][2])
    assert set(states[:3]) == {states[0]}
    # Whichever worker serves now, it was initialized exactly once.
    assert all(value == "ready" and count == 1 for value, count, _ in states)


@pytest.mark.backends("local")
async def test_initializer_runs_in_a_new_worker_after_recycling() -> None:
    async with contract_pool(
        1, initializer=workers.initialize, initargs=(7,), max_tasks_per_worker=1
    ) as pool:
        states = [await pool.run(workers.initialization_state) for _ in range(2)]
    assert [(value, count) for value, count, _ in states] == [(7, 1), (7, 1)]
    assert states[0][2] != states[1][2]


async def test_stats_count_running_completed_failed_and_cancelled_calls(tmp_path) -> None:
    release = tmp_path / "release"
    async with contract_pool(1) as pool:
        assert pool.stats() == anypool.PoolStats(0, 0, 0, 0, 0, 0, 0, 0)
        async with anyio.create_task_group() as group:
            group.start_soon(pool.run, workers.write_pid_and_wait_for, tmp_path / "pid", release)
            await read_pid(tmp_path / "pid")
            running = pool.stats()
            release.touch()
        if contract().owns_workers:
            assert (running.workers_alive, running.workers_busy, running.workers_idle) == (1, 1, 0)
        assert running.calls_running == 1

        idle = pool.stats()
        if contract().owns_workers:
            assert (idle.workers_alive, idle.workers_busy, idle.workers_idle) == (1, 0, 1)
        assert (idle.calls_running, idle.calls_completed) == (0, 1)

        with pytest.raises(ValueError, match="counted"):
            await pool.run(workers.raise_value_error, "counted")
        assert pool.stats().calls_failed == 1

        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.run, workers.write_pid_and_sleep, tmp_path / "victim", 60)
                await read_pid(tmp_path / "victim")
                scope.cancel()
        after = pool.stats()
    calls = (after.calls_running, after.calls_completed, after.calls_failed, after.calls_cancelled)
    assert calls == (0, 1, 1, 1)
    assert after.calls_pending == 0
    # The killed worker, replaced (on Ray, by a new one started at once).
    assert after.workers_replaced == 1
    if contract().owns_workers:
        assert after == anypool.PoolStats(0, 0, 0, *calls, workers_replaced=1)


async def test_stats_is_a_frozen_dataclass() -> None:
    async with contract_pool(1) as pool:
        stats = pool.stats()
    with pytest.raises(AttributeError):
        stats.workers_alive = 5  # type: ignore[misc]


# --- start methods ----------------------------------------------------------------------------


@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
async def test_every_start_method_runs_functions_and_lambdas(start_method: str) -> None:
    async with contract_pool(1, start_method=start_method) as pool:
        assert pool.start_method == start_method
        assert await pool.run(workers.square, 9) == 81
        assert await pool.run(lambda: "from a lambda") == "from a lambda"


@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", anypool.START_METHODS)
async def test_an_async_function_runs_under_every_start_method_and_event_loop(
    start_method: str, anyio_backend_name: str
) -> None:
    # Under fork, the worker starts inside a copy of the caller's running event loop.
    library = "trio" if anyio_backend_name == "trio" else "asyncio"
    async with contract_pool(1, start_method=start_method) as pool:
        assert await pool.run(workers.running_event_loop) == library
        assert await pool.run(workers.running_event_loop) == library
        assert await pool.run(workers.async_library_seen_by_sync_code) is None


@pytest.mark.backends("local")
async def test_a_forked_worker_has_none_of_the_callers_signal_handling() -> None:
    with anyio.open_signal_receiver(signal.SIGUSR1):
        async with contract_pool(1, start_method="fork") as pool:
            wakeup_fd, default = await pool.run(workers.inherited_signal_state, signal.SIGUSR1)
    assert wakeup_fd == -1
    assert default, "the worker kept the handler the caller's event loop installed"


MAIN_SCRIPT = """
    import asyncio
    import sys

    import anypool


    def square(x):
        return x * x


    async def main(start_method):
        offset = 10
        async with anypool.Pool(2, start_method=start_method) as pool:
            print(await pool.run(square, 7))
            print(await pool.run(lambda x: x + 1, 41))
            print(await pool.run(lambda: offset + 1))


    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_functions_defined_in_a_scripts_main_run_under_every_start_method(
    start_method: str, tmp_path
) -> None:
    script = write_script(tmp_path, MAIN_SCRIPT)
    output = run_script(script, start_method)
    assert output.stdout.split() == ["49", "42", "11"]
    assert output.stderr == ""


@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_functions_defined_in_a_main_module_run_with_dash_m_run_under_every_start_method(
    start_method: str, tmp_path
) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    write_script(tmp_path / "app", MAIN_SCRIPT, name="main.py")
    output = run_module(tmp_path, "app.main", start_method)
    assert output.stdout.split() == ["49", "42", "11"]
    assert output.stderr == ""


HEAVY_IMPORT = """
    import os
    from pathlib import Path

    with open(Path(__file__).parent / "imports", "a") as log:
        print(os.getpid(), file=log)

    VALUE = 42
"""

# Fails to import with another command line than the application's.
NEEDS_ITS_COMMAND_LINE = """
    import sys

    if sys.argv[1:] != ["--go"]:
        sys.exit("usage: python -m app.main --go")
"""

# Fails to import anywhere but in the application's process.
ONLY_IN_THE_APPLICATION = """
    import os

    if os.environ["APP_PID"] != str(os.getpid()):
        raise RuntimeError("imported outside the application")
"""

APP_MAIN = """
    import os
    import sys

    os.environ["APP_PID"] = str(os.getpid())

    import anypool

    from app import fragile, heavy, settings


    def uses_heavy():
        return heavy.VALUE, os.getpid()


    async def main():
        # Each call on a worker of its own, one after the other.
        async with anypool.Pool(1, max_tasks_per_worker=1) as pool:
            for _ in range(4):
                value, pid = await pool.run(uses_heavy)
                print(value, pid)


    if __name__ == "__main__":
        import asyncio

        asyncio.run(main())
"""


@pytest.mark.backends("local")
@pytest.mark.parametrize("run_as", ["module", "script"])
def test_what_the_main_module_imports_is_preloaded_once_for_the_workers_started_later(
    run_as: str, tmp_path
) -> None:
    # Workers need what the main module's functions use (they come pickled by value, and
    # import it as they are unpickled): the fork server imports what the main module imports
    # once it has forked the first worker (which imports it itself: a cold start does not wait
    # for it), and the workers forked after that start with it, whether the application was
    # run with -m or as a script. A module that cannot be imported there does not stop it,
    # and goes unsaid.
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    write_script(app, HEAVY_IMPORT, name="heavy.py")
    write_script(app, NEEDS_ITS_COMMAND_LINE, name="settings.py")
    write_script(app, ONLY_IN_THE_APPLICATION, name="fragile.py")
    if run_as == "module":
        write_script(app, APP_MAIN, name="main.py")
        output = run_module(tmp_path, "app.main", "--go")
    else:
        # A script's directory is the start of sys.path: it imports its neighbours directly.
        script = APP_MAIN.replace("from app import", "import")
        output = run_script(write_script(app, script, name="main.py"), "--go")
    assert output.stderr == ""
    results = [line.split() for line in output.stdout.splitlines()]
    assert [value for value, _ in results] == ["42"] * 4
    worker_pids = [pid for _, pid in results]
    assert len(set(worker_pids)) == 4
    importers = (app / "imports").read_text().split()
    # The application, the fork server, and the first worker (or, on a machine so busy that
    # the server had not imported it by then, the first few): not the last.
    assert len(set(importers) - set(worker_pids)) == 2
    importing_workers = [pid for pid in worker_pids if pid in importers]
    assert importing_workers == worker_pids[: len(importing_workers)]
    assert 1 <= len(importing_workers) < 4


RECORD_CLOUDPICKLE = """
    import sys


    def record():
        # A pool's initializer, found by reference: it runs before a worker unpickles a call.
        print("cloudpickle" in sys.modules, file=sys.stderr)
"""

CALLS_BY_VALUE_OR_REFERENCE = """
    import asyncio
    import os
    import sys

    import anypool

    import recorder


    async def main():
        by_value = sys.argv[1] == "by-value"
        # Each call on a worker of its own: every worker start is seen.
        async with anypool.Pool(1, max_tasks_per_worker=1, initializer=recorder.record) as pool:
            for _ in range(3):
                await pool.run((lambda: os.getpid()) if by_value else os.getpid)


    if __name__ == "__main__":
        asyncio.run(main())
"""


@pytest.mark.backends("local")
@pytest.mark.parametrize("calls", ["by-value", "by-reference"])
def test_forkserver_workers_start_with_cloudpickle_only_where_calls_need_it(
    calls: str, tmp_path
) -> None:
    # cloudpickle takes some 15 ms to import: the fork server imports it once a call was
    # pickled by value (every worker needs it then), after forking the first worker (which
    # imports it itself, as the cold start does not wait), and never where calls are found
    # by reference.
    write_script(tmp_path, RECORD_CLOUDPICKLE, name="recorder.py")
    script = write_script(tmp_path, CALLS_BY_VALUE_OR_REFERENCE)
    output = run_script(script, calls)
    seen = output.stderr.split()
    if calls == "by-value":
        # (The third worker starts two worker lifetimes after the server was told.)
        assert seen[0] == "False", output.stderr
        assert seen[2] == "True", output.stderr
    else:
        assert seen == ["False"] * 3, output.stderr


def _retire_on_first_message(connection: multiprocessing.connection.Connection) -> None:
    # Plays a worker whose idle timeout expired just as a call was on its way: it announces
    # its retirement instead of answering, then exits, leaving the call unread.
    fd = connection.fileno()
    os.read(fd, 1)
    os.write(fd, framing.HEADER.pack(wire.RETIRING, 0))


@pytest.mark.backends("local")
async def test_call_that_reaches_a_worker_as_it_retires_runs_on_a_new_worker() -> None:
    # The race cannot be provoked from outside, so a stand-in worker takes the idle slot.
    async with contract_pool(1, start_method="fork") as pool:
        retiring = stand_in_worker(pool, _retire_on_first_message)

        pid = await pool.run(workers.current_pid)

        assert pid not in (retiring.pid, os.getpid())
        stats = pool.stats()
        assert (stats.calls_completed, stats.calls_failed, stats.workers_alive) == (1, 0, 1)
    assert retiring.exitcode == 0
