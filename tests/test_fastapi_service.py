"""examples/fastapi_service.py served by uvicorn in a process of its own, driven over HTTP with
httpx: work runs in parallel beside a responsive event loop, a client that leaves and a
server-side timeout each kill the worker running their call, and the server's shutdown leaves no
process behind (docs/web.md states these bounds).

The server runs as a subprocess so that its shutdown is real (signals, uvicorn's graceful
shutdown, the app's lifespan). Its workers are the forkserver's children, not the test's: the
tests find them below the server's process with psutil.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest
from examples import fastapi_service

from support import ROOT, dead, script_environment, wait_until, wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.timing]

EXAMPLE = ROOT / "examples" / "fastapi_service.py"

DISCONNECT_BOUND = 5.0
"""Seconds from a client's disconnect until its call's worker is gone (docs/web.md)."""
SHUTDOWN_BOUND = 5.0
"""Seconds from the shutdown signal, beyond the server's graceful-shutdown wait, until the
server and every process below it are gone (docs/web.md)."""
START_TIMEOUT = 30.0
"""Seconds the server may take to start listening (a busy machine: generous)."""

ENDLESS = 10**12
"""A limit whose count takes days: the call ends only if it is cancelled."""
HEAVY, HEAVY_PRIMES = 600_000, 49_098
"""A count that takes about 1.7 s on one core of the development machine."""


@pytest.fixture
def anyio_backend() -> str:
    # The client side; the server runs uvicorn's asyncio loop whatever the test runs on.
    return "asyncio"


@dataclasses.dataclass
class Server:
    """The example, served by uvicorn in a subprocess listening on ``url``."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def tree(self) -> list[psutil.Process]:
        """The server's descendants: anypool's fork server, multiprocessing's resource
        tracker, and the pool's workers."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def workers(self) -> set[int]:
        """The pids of the pool's workers: the processes below the server but the helpers
        (workers of the fork server share its command line, but are its children, not the
        server's)."""
        found = set()
        for process in self.tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                helper = process.ppid() == self.process.pid and any(
                    f"{name} import main" in " ".join(process.cmdline())
                    for name in ("child.forkserver", "multiprocessing.resource_tracker")
                )
                if not helper and process.status() != psutil.STATUS_ZOMBIE:
                    found.add(process.pid)
        return found

    def client(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60, **options)

    async def health(self) -> dict[str, Any]:
        async with self.client() as client:
            response = await client.get("/health")
        assert response.status_code == 200, response.text
        health: dict[str, Any] = response.json()
        assert health["status"] == "ok"
        return health

    async def wait_for_calls_running(self, calls: int) -> dict[str, Any]:
        """Poll /health until the pool runs ``calls`` calls; the health report that said so."""
        deadline = time.monotonic() + START_TIMEOUT
        while (health := await self.health())["calls_running"] != calls:
            assert time.monotonic() < deadline, f"never {calls} calls running: {health}"
            await anyio.sleep(0.02)
        return health


Serve = Callable[..., Server]
"""The ``serve`` fixture: starts the example with the command-line options it is given."""


def start_server(tmp_path: Path, *options: str) -> Server:
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--port", "0", *options],
            cwd=ROOT,
            env=script_environment(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            # A process group of its own, as a terminal's foreground job: Ctrl-C is a SIGINT to
            # the group.
            start_new_session=True,
        )
    listening = re.compile(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)")

    def started() -> re.Match[bytes] | None:
        assert process.poll() is None, f"the server exited:\n{log.read_text()}"
        return listening.search(log.read_bytes())

    assert wait_until(started, START_TIMEOUT), f"the server did not start:\n{log.read_text()}"
    match = started()
    assert match is not None
    return Server(process, match.group(1).decode(), log)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(*options)`` starts the example with those command-line options; whatever it
    started is stopped after the test (the tests of shutdown stop it themselves)."""
    servers: list[Server] = []

    def serve(*options: str) -> Server:
        servers.append(start_server(tmp_path, *options))
        return servers[-1]

    yield serve
    for server in servers:
        if server.process.poll() is None:
            tree = server.tree
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(SHUTDOWN_BOUND + fastapi_service.GRACEFUL_SHUTDOWN)
            finally:
                for process in [server.process, *tree]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)
                server.process.wait()


@contextlib.asynccontextmanager
async def request_in_flight(server: Server, limit: int) -> AsyncIterator[list[httpx.Response]]:
    """GET /primes?limit=``limit`` in a task; the response, once it came, is in the list
    yielded. Leaving the block before the response cancels the request, which closes its
    connection: the client leaves."""
    responses: list[httpx.Response] = []
    async with server.client() as client, anyio.create_task_group() as group:

        async def get() -> None:
            responses.append(await client.get("/primes", params={"limit": limit}))

        group.start_soon(get)
        yield responses
        group.cancel_scope.cancel()


async def test_calls_run_in_parallel_on_every_worker_while_health_answers(serve: Serve) -> None:
    server = serve()
    calls = fastapi_service.WORKERS
    async with server.client() as client, anyio.create_task_group() as group:
        responses: list[httpx.Response] = []

        async def get() -> None:
            responses.append(await client.get("/primes", params={"limit": HEAVY}))

        for _ in range(calls):
            group.start_soon(get)
        # /health answers while every worker is busy: its own report says so.
        health = await server.wait_for_calls_running(calls)
        assert health["workers_busy"] == calls
        assert len(server.workers()) == calls
    assert [response.status_code for response in responses] == [200] * calls
    assert [response.json() for response in responses] == [
        {"limit": HEAVY, "primes": HEAVY_PRIMES}
    ] * calls


async def test_a_client_that_disconnects_gets_its_worker_killed(serve: Serve) -> None:
    server = serve()
    async with server.client() as client:
        # A first call starts the worker the next one reuses (the most recently used).
        assert (await client.get("/primes", params={"limit": 10})).json()["primes"] == 4
    (worker,) = server.workers()
    async with request_in_flight(server, ENDLESS) as responses:
        await server.wait_for_calls_running(1)
        assert server.workers() == {worker}
    left = time.monotonic()
    assert await wait_until_async(lambda: not psutil.pid_exists(worker), DISCONNECT_BOUND), (
        f"worker {worker} still exists {DISCONNECT_BOUND} s after its client left"
    )
    print(f"worker gone {time.monotonic() - left:.3f} s after the client left")
    assert not responses
    health = await server.health()
    assert (health["calls_running"], health["calls_cancelled"]) == (0, 1)
    assert "499: the client closed the connection" in server.log.read_text()
    async with server.client() as client:
        assert (await client.get("/primes", params={"limit": 100})).json()["primes"] == 25


async def test_a_server_side_timeout_answers_504_and_kills_the_worker(serve: Serve) -> None:
    server = serve()
    async with server.client() as client:
        assert (await client.get("/primes", params={"limit": 10})).json()["primes"] == 4
        (worker,) = server.workers()
        started = time.monotonic()
        response = await client.get("/primes", params={"limit": ENDLESS, "timeout": 0.5})
        print(f"504 after {time.monotonic() - started:.3f} s")
        assert response.status_code == 504
        assert response.json() == {"detail": "no result within 0.5 s: the computation was stopped"}
        # The worker is reaped before the cancellation leaves pool.run: before the response.
        assert not psutil.pid_exists(worker)
        assert server.workers() == set()
        health = await server.health()
        assert (health["calls_running"], health["calls_cancelled"]) == (0, 1)
        assert (await client.get("/primes", params={"limit": 100})).json()["primes"] == 25


def ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (a worker does once it has started)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def stop(server: Server, how: str) -> None:
    if how == "SIGTERM to the server":
        server.process.send_signal(signal.SIGTERM)
    else:  # Ctrl-C in a terminal: SIGINT to the foreground process group, workers included
        os.killpg(server.process.pid, signal.SIGINT)


def assert_all_gone(server: Server, tree: list[psutil.Process], bound: float) -> str:
    """The server exits within ``bound`` seconds, and every process that was below it has
    exited by then too; how long each took."""
    started = time.monotonic()
    try:
        code = server.process.wait(bound)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server still runs {bound} s after the signal:\n{server.log.read_text()}")
    exited = time.monotonic() - started
    # Exited, reaped or not: the server's orphans are reaped by whatever process adopts them
    # (in a container, its init, which may take its time), not by the test.
    remaining = bound - exited
    assert wait_until(lambda: all(dead(process.pid) for process in tree), remaining), (
        f"left behind: {[process for process in tree if not dead(process.pid)]}"
    )
    # uvicorn raises the signal that stopped it again once it has shut down: the exit status
    # says which signal it was (or 0 where the signal's default action exits with it).
    assert code in (0, -signal.SIGTERM, -signal.SIGINT), server.log.read_text()
    assert "Application shutdown complete." in server.log.read_text()
    return f"server gone {exited:.3f} s, every process below it {time.monotonic() - started:.3f} s"


async def test_shutdown_after_a_client_left_does_not_wait_for_its_call(serve: Serve) -> None:
    # uvicorn's graceful shutdown waits for every request still running: without the disconnect
    # watch, it would wait the whole 30 s for the abandoned call.
    server = serve("--graceful-shutdown", "30")
    async with request_in_flight(server, ENDLESS):
        await server.wait_for_calls_running(1)
    tree = server.tree
    await server.wait_for_calls_running(0)
    stop(server, "SIGTERM to the server")
    print(assert_all_gone(server, tree, SHUTDOWN_BOUND), "after SIGTERM")


@pytest.mark.parametrize("how", ["SIGTERM to the server", "Ctrl-C"])
async def test_shutdown_with_calls_running_stops_them_and_leaves_no_process(
    serve: Serve, how: str
) -> None:
    graceful = 1
    server = serve("--graceful-shutdown", str(graceful))
    async with server.client() as client, anyio.create_task_group() as group:
        outcomes: list[object] = []

        async def get() -> None:
            # The server cancels this request once its graceful shutdown is over (uvicorn then
            # answers 500), or closes the connection.
            try:
                outcomes.append(
                    (await client.get("/primes", params={"limit": ENDLESS})).status_code
                )
            except httpx.TransportError as exc:
                outcomes.append(exc)

        for _ in range(fastapi_service.WORKERS):
            group.start_soon(get)
        await server.wait_for_calls_running(fastapi_service.WORKERS)
        tree = server.tree
        workers = server.workers()
        assert len(workers) == fastapi_service.WORKERS
        # A call counts as running once it is sent to its worker, which may still be starting
        # (importing the example again): a Ctrl-C then would end that worker, before it starts
        # ignoring SIGINT, with exit code 1 and its call with BrokenWorkerError. Here the
        # workers run their calls, as in a server that has been up for a while.
        assert await wait_until_async(
            lambda: all(ignores_sigint(pid) for pid in workers), START_TIMEOUT
        )
        stop(server, how)
        took = await anyio.to_thread.run_sync(
            assert_all_gone, server, tree, graceful + SHUTDOWN_BOUND
        )
    print(took, f"after {how} (graceful shutdown: {graceful} s)")
    assert len(outcomes) == fastapi_service.WORKERS
    # The calls were cancelled (their workers killed), not broken.
    assert "BrokenWorkerError" not in server.log.read_text()
