"""anypool.run: a default pool per event loop, started on first use and gone with its loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import anyio
import pytest
import trio
import uvloop

import anypool
import workers
from support import gone, pool_processes, run_script, write_script


@pytest.mark.anyio
async def test_module_run_returns_the_result() -> None:
    assert await anypool.run(workers.combine, 1, 2, scale=3) == 9
    assert await anypool.run(lambda: "lambda") == "lambda"


@pytest.mark.anyio
async def test_module_run_reuses_one_pool_within_an_event_loop() -> None:
    assert pool_processes() == set()
    pids = [await anypool.run(workers.current_pid) for _ in range(3)]
    assert len(set(pids)) == 1
    assert pool_processes() == {pids[0]}


@pytest.mark.anyio
async def test_module_run_raises_the_functions_exception() -> None:
    with pytest.raises(ValueError, match="from the default pool") as info:
        await anypool.run(workers.raise_value_error, "from the default pool")
    assert isinstance(info.value.__cause__, anypool.RemoteTraceback)


async def _worker_pids() -> list[int]:
    return [await anypool.run(workers.current_pid) for _ in range(2)]


def _run_with_uvloop(main: Callable[[], object]) -> object:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


EVENT_LOOP_RUNNERS = {
    "asyncio.run": lambda main: asyncio.run(main()),
    "uvloop": _run_with_uvloop,
    "trio.run": trio.run,
    "anyio.run-asyncio": lambda main: anyio.run(main, backend="asyncio"),
    "anyio.run-trio": lambda main: anyio.run(main, backend="trio"),
}


@pytest.mark.parametrize("run_loop", EVENT_LOOP_RUNNERS.values(), ids=EVENT_LOOP_RUNNERS.keys())
def test_default_pool_is_shut_down_when_its_event_loop_ends(run_loop) -> None:
    pids = run_loop(_worker_pids)
    assert pids[0] == pids[1]
    assert pids[0] != os.getpid()
    # Stopped and reaped by the time the loop's runner returns: no waiting.
    assert gone(pids[0])
    assert pool_processes() == set()


def test_each_event_loop_gets_a_default_pool_of_its_own() -> None:
    first = asyncio.run(_worker_pids())
    second = trio.run(_worker_pids)
    third = asyncio.run(_worker_pids())
    assert len({first[0], second[0], third[0]}) == 3
    assert pool_processes() == set()


ASYNCIO_SCRIPT = """
    import asyncio
    import os

    import psutil

    import anypool


    async def main():
        return await anypool.run(os.getpid)


    if __name__ == "__main__":
        pid = asyncio.run(main())
        print(pid, psutil.pid_exists(pid))
"""

TRIO_SCRIPT = """
    import os

    import psutil
    import trio

    import anypool


    async def main():
        return await anypool.run(os.getpid)


    if __name__ == "__main__":
        pid = trio.run(main)
        print(pid, psutil.pid_exists(pid))
"""

UNCLOSED_LOOP_SCRIPT = """
    import asyncio
    import os

    import anypool

    if __name__ == "__main__":
        # The loop is never closed: the default pool goes at interpreter exit.
        loop = asyncio.new_event_loop()
        print(loop.run_until_complete(anypool.run(os.getpid)), "unknown")
"""


@pytest.mark.parametrize(
    "code",
    [ASYNCIO_SCRIPT, TRIO_SCRIPT, UNCLOSED_LOOP_SCRIPT],
    ids=["asyncio.run", "trio.run", "unclosed-loop"],
)
def test_script_using_the_default_pool_exits_cleanly_and_leaves_no_process(
    code: str, tmp_path
) -> None:
    script = write_script(tmp_path, code)
    output = run_script(script)
    pid_text, exists_after_loop = output.stdout.split()
    pid = int(pid_text)
    assert exists_after_loop in ("False", "unknown")
    assert output.stderr == ""
    # Stopped and reaped before the script exited.
    assert gone(pid)
