"""Backends every async test runs on, and the leak check every test passes.

``wait_until`` and the other helpers live in ``support.py`` so that test modules can import them.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.process
import multiprocessing.resource_tracker
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import uvloop

from anypool.backends.local import forkserver
from support import (
    ALL_BACKENDS,
    BACKEND_IDS,
    DASK_CLIENT,
    ENGINE_PROCESSES,
    POLL_INTERVAL,
    POOL_BACKENDS,
    descendants,
    helper_fds,
    open_fds,
    use_contract_backend,
)

LEAK_DEADLINE = 3.0


@pytest.fixture(params=ALL_BACKENDS, ids=BACKEND_IDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Tests marked ``anyio`` run on asyncio, asyncio with uvloop, and trio."""
    return request.param


@pytest.fixture
def contract_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Contract tests (modules marked ``usefixtures("contract_backend")``) run on the backends
    of ``support.POOL_BACKENDS`` (see :func:`pytest_generate_tests`): their pools come from
    ``support.contract_pool``."""
    use_contract_backend(request.param)
    try:
        yield request.param
    finally:
        use_contract_backend("local")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A contract test runs on each backend its ``backends`` marker admits (all, without one)
    # that can do what its ``needs`` marker names. An engine's runs carry its marker (``ray``),
    # so they run beside its session (``make test-ray``), not in the default run.
    if "contract_backend" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("backends")
    needs = metafunc.definition.get_closest_marker("needs")
    names = [
        name
        for name, backend in POOL_BACKENDS.items()
        if (only is None or name in only.args)
        and (needs is None or backend.unsupported.isdisjoint(needs.args))
    ]
    metafunc.parametrize(
        "contract_backend",
        [
            name if name == "local" else pytest.param(name, marks=getattr(pytest.mark, name))
            for name in names
        ],
        indirect=True,
    )


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A real local Ray for the tests marked ``ray``, started once for the session; none of
    its processes may outlive its shutdown."""
    import ray

    before = set(descendants())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with engine_processes("Ray", before):
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def dask_session() -> Iterator[None]:
    """A real Dask ``LocalCluster`` of two worker processes, one thread each, for the tests
    marked ``dask``, started once for the session, with a synchronous client; none of its
    processes may outlive its close."""
    import dask
    import distributed

    before = set(descendants())
    # A worker that dies fails its task at once, rather than after Dask's retries.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    client = distributed.Client(cluster, set_as_default=False)
    DASK_CLIENT.append(client)
    with engine_processes("Dask", before):
        try:
            yield
        finally:
            DASK_CLIENT.clear()
            client.close()
            cluster.close()


def assert_no_actors_left() -> None:
    """Every Ray actor a test's pools started is dead (or dying) once the test has ended: a pool
    that keeps its workers holds their CPUs from the pools of later tests."""
    from ray._private import state  # (Ray's own listing needs its dashboard, which is off)

    deadline = time.monotonic() + LEAK_DEADLINE
    while True:
        alive = [actor for actor in state.actors().values() if actor["State"] != "DEAD"]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL * 10)
    assert not alive, f"the test left Ray actors: {[(a['ActorID'], a['State']) for a in alive]}"


@contextlib.contextmanager
def engine_processes(engine: str, before: set[int]) -> Iterator[None]:
    """The processes started since ``before`` are the engine's (``support.ENGINE_PROCESSES``)
    until it stops; none may outlive that."""
    started = set(descendants()) - before
    ENGINE_PROCESSES.update(started)
    try:
        yield
    finally:
        processes = [psutil.Process(pid) for pid in started if psutil.pid_exists(pid)]
        _, alive = psutil.wait_procs(processes, timeout=LEAK_DEADLINE * 5)
        ENGINE_PROCESSES.difference_update(started)
        assert not alive, f"{engine} left these behind: {[describe_process(p) for p in alive]}"


@pytest.fixture(scope="session", autouse=True)
def multiprocessing_helpers() -> None:
    """Start the process-wide helpers once, so that every test's baseline has them:
    anypool's fork server, multiprocessing's resource tracker, and the wake-up pipe uvloop
    creates with its first loop."""
    forkserver.ensure_running()
    multiprocessing.resource_tracker.ensure_running()
    uvloop.new_event_loop().close()


# --- leak check ------------------------------------------------------------------------------


def shm_entries() -> set[str]:
    """The shared-memory segments on the machine, but multiprocessing's named semaphores.

    anypool creates no semaphore; those come from other programs on the machine (a benchmark
    of multiprocessing.Pool run beside the tests, say), and would be blamed on whichever test
    runs at the time.
    """
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.mp-")}


def describe_process(process: psutil.Process) -> str:
    try:
        with process.oneshot():
            return f"pid {process.pid} [{process.status()}] {' '.join(process.cmdline())!r}"
    except psutil.Error as error:
        return f"pid {process.pid} ({type(error).__name__})"


def unjoined_processes() -> list[str]:
    """A hint for the report: multiprocessing keeps the Process objects of children that were
    never joined (with their descriptors) until the next Process.start()."""
    kept = multiprocessing.process._children  # type: ignore[attr-defined]
    return [f"  (multiprocessing still holds unjoined {process!r})" for process in kept]


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves a process (zombies included), a descriptor or a shared-memory
    segment behind. Event loops run by the test runners are closed by the time this checks.

    Under a test marked ``ray`` (``dask``), sockets are the engine's: its client connects to
    the processes it starts and keeps those connections as it likes (the session's end checks
    the engine's processes)."""
    engines = [name for name in ("ray", "dask") if request.node.get_closest_marker(name)]
    for engine in engines:
        # Every test marked with an engine runs beside the session's: started (once) before
        # this takes its baseline.
        request.getfixturevalue(f"{engine}_session")
    engines_sockets = bool(engines)
    processes_before = set(descendants())
    fds_before = open_fds()
    shm_before = shm_entries()
    yield

    def left_behind() -> tuple[dict[int, psutil.Process], dict[int, str], set[str]]:
        processes = {
            pid: process for pid, process in descendants().items() if pid not in processes_before
        }
        helpers = helper_fds()
        fds = {
            fd: target
            for fd, target in open_fds().items()
            if (fd not in fds_before or fds_before[fd] != target)
            and fd not in helpers
            and not (engines_sockets and target.startswith("socket:"))
        }
        return processes, fds, shm_entries() - shm_before

    if "ray" in engines:
        assert_no_actors_left()
    processes, fds, shm = left_behind()
    if not (processes or fds or shm):
        return
    # Descriptors held by objects in reference cycles (tracebacks kept by pytest.raises) are
    # closed when those objects are collected; a collectable object is not a leak. A full
    # collection takes a tenth of a second in a long session: it runs only when something is
    # left (it can only close descriptors and let processes be reaped, never add any).
    gc.collect()
    deadline = time.monotonic() + LEAK_DEADLINE
    while True:
        processes, fds, shm = left_behind()
        if not (processes or fds or shm) or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    if not (processes or fds or shm):
        return
    report = [f"the test left these behind (after {LEAK_DEADLINE} s):"]
    report += [f"  process {describe_process(process)}" for process in processes.values()]
    report += [f"  fd {fd} -> {target}" for fd, target in sorted(fds.items())]
    report += [f"  /dev/shm/{name}" for name in sorted(shm)]
    report += unjoined_processes()
    # Keep later tests' baselines clean of this test's processes.
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in shm:
        with contextlib.suppress(OSError):
            Path("/dev/shm", name).unlink()
    pytest.fail("\n".join(report), pytrace=False)
