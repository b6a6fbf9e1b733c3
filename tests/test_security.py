"""What anypool exposes to other users of the machine: no network port, no socket they can reach.

The trust model (README.md) is that a pool runs whatever it is sent; these tests check that only
its owner can send it anything.
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import stat

import psutil
import pytest

import anypool
import workers
from support import pool_processes

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
async def test_no_process_of_the_pool_listens_on_a_network_port(start_method: str) -> None:
    async with anypool.Pool(2, start_method=start_method) as pool:
        # Busy and idle workers, streams and channels: every kind of pipe in use.
        async with pool.stream(workers.count_up, 3) as numbers:
            assert [n async for n in numbers] == [0, 1, 2]
        assert await pool.run(workers.square, 3) == 9
        processes = [psutil.Process(pid) for pid in pool_processes()]
        if start_method == "forkserver":
            forkserver_pid = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
            processes.append(psutil.Process(forkserver_pid))
        processes.append(psutil.Process())
        assert len(processes) >= 2
        for process in processes:
            # Any TCP or UDP socket at all, listening or not, in the parent or a worker.
            assert process.net_connections(kind="inet") == [], process


def test_the_forkserver_socket_is_reachable_by_this_user_only() -> None:
    anypool.Pool(1)  # a pool with the default start method, as an application makes one
    multiprocessing.forkserver.ensure_running()
    address = multiprocessing.forkserver._forkserver._forkserver_address  # type: ignore[attr-defined]
    # A path, not an abstract-namespace name (those have no permissions at all).
    assert isinstance(address, str)
    assert not address.startswith("\0")
    directory = os.stat(os.path.dirname(address))
    assert directory.st_uid == os.getuid()
    assert stat.S_IMODE(directory.st_mode) == 0o700


async def test_worker_pipes_are_private_socket_pairs() -> None:
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        connections = psutil.Process(pid).net_connections(kind="unix")
    # Unnamed on both ends: nothing on the filesystem to connect to.
    assert connections
    assert all(not connection.laddr and not connection.raddr for connection in connections)
