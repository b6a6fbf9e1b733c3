"""anypool's fork server (the forkserver start method): its workers get what multiprocessing's
would have inherited from the parent, and a server that goes away is replaced."""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing import shared_memory
from typing import Any

import pytest

import anypool
import workers
from anypool.backends.local import forkserver
from support import gone, run_script, wait_until_async, write_script

pytestmark = [pytest.mark.anyio, pytest.mark.backends("local")]


def read_shared_memory(name: str) -> bytes:
    segment = shared_memory.SharedMemory(name)
    try:
        return bytes(segment.buf[:5])
    finally:
        segment.close()


def put(mapping: Any, key: str, value: int) -> None:
    mapping[key] = value


async def test_a_killed_fork_server_is_replaced_at_the_next_worker_start() -> None:
    async with anypool.Pool(1, max_tasks_per_worker=1) as pool:
        first = await pool.run(workers.current_pid)
        old_server = forkserver.ensure_running()
        os.kill(old_server, signal.SIGKILL)
        # Its worker dies with it (it was let go after its one call anyway).
        assert await wait_until_async(lambda: gone(first) or not _alive(first))

        second = await pool.run(workers.current_pid)

        assert second != first
        new_server = forkserver.server_pid()
        assert new_server not in (None, old_server)
        # The old server was reaped, not left a zombie.
        assert gone(old_server)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X")


async def test_workers_start_in_the_parents_current_directory(tmp_path, monkeypatch) -> None:
    # The server started elsewhere (the session's first worker): each worker follows the
    # parent's directory of the moment it starts, as multiprocessing's do.
    forkserver.ensure_running()
    monkeypatch.chdir(tmp_path)
    async with anypool.Pool(1) as pool:
        assert await pool.run(os.getcwd) == str(tmp_path)


async def test_shared_memory_a_worker_attaches_to_outlives_the_worker() -> None:
    # A worker of its own resource tracker would have it unlink the segment as it exits
    # (multiprocessing registers the segments a process attaches to): workers share the
    # parent's, as multiprocessing's own do.
    segment = shared_memory.SharedMemory(create=True, size=5)
    try:
        segment.buf[:5] = b"hello"
        async with anypool.Pool(1, max_tasks_per_worker=1) as pool:
            for _ in range(3):
                assert await pool.run(read_shared_memory, segment.name) == b"hello"
    finally:
        segment.close()
        segment.unlink()


async def test_a_worker_uses_a_proxy_of_the_parents_multiprocessing_manager() -> None:
    # The proxy connects back to the manager with this process's key, which the worker has.
    with multiprocessing.get_context("spawn").Manager() as manager:
        shared = manager.dict()
        async with anypool.Pool(1) as pool:
            await pool.run(put, shared, "answer", 42)
        assert dict(shared) == {"answer": 42}


def test_workers_have_the_parents_key_and_tracker_when_multiprocessing_starts_with_python(
    tmp_path, monkeypatch
) -> None:
    # A sitecustomize (or a .pth file: coverage's does this) imports multiprocessing into every
    # interpreter, the fork server's included, before the server could watch for its import.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import multiprocessing.process, multiprocessing.resource_tracker\n"
    )
    paths = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    code = """
        import multiprocessing, sys
        from multiprocessing import shared_memory
        import anyio, anypool

        def put(mapping, key, value):
            assert "multiprocessing.process" in sys.modules
            mapping[key] = value

        def read(name):
            segment = shared_memory.SharedMemory(name)
            try:
                return bytes(segment.buf[:5])
            finally:
                segment.close()

        async def main():
            segment = shared_memory.SharedMemory(create=True, size=5)
            segment.buf[:5] = b"hello"
            try:
                with multiprocessing.get_context("spawn").Manager() as manager:
                    shared = manager.dict()
                    async with anypool.Pool(
                        1, start_method="forkserver", max_tasks_per_worker=1
                    ) as pool:
                        await pool.run(put, shared, "answer", 42)
                        print(dict(shared))
                        print([await pool.run(read, segment.name) for _ in range(2)])
            finally:
                segment.close()
                segment.unlink()

        if __name__ == "__main__":
            anyio.run(main)
    """
    output = run_script(write_script(tmp_path, code)).stdout.splitlines()
    assert output == ["{'answer': 42}", "[b'hello', b'hello']"]
