"""What anypool exposes to other users of the machine: no network port, no socket they can reach.

The trust model (README.md) is that a pool runs whatever it is sent; these tests check that only
its owner can send it anything.
"""

from __future__ import annotations

import psutil
import pytest

import anypool
import workers
from anypool.backends.local import forkserver
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
            processes.append(psutil.Process(forkserver.ensure_running()))
        processes.append(psutil.Process())
        assert len(processes) >= 2
        for process in processes:
            # Any TCP or UDP socket at all, listening or not, in the parent or a worker.
            assert process.net_connections(kind="inet") == [], process


def test_the_fork_server_is_reached_through_a_private_socket_pair_only() -> None:
    # multiprocessing's forkserver listens on a path that any process of the user's may
    # connect to; anypool's has one unnamed socket, whose other end only this process holds.
    connections = psutil.Process(forkserver.ensure_running()).net_connections(kind="unix")
    assert len(connections) == 1
    assert not connections[0].laddr
    assert not connections[0].raddr


async def test_worker_pipes_are_private_socket_pairs() -> None:
    async with anypool.Pool(1) as pool:
        pid = await pool.run(workers.current_pid)
        connections = psutil.Process(pid).net_connections(kind="unix")
    # Unnamed on both ends: nothing on the filesystem to connect to.
    assert connections
    assert all(not connection.laddr and not connection.raddr for connection in connections)
