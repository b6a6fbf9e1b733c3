"""Helpers shared by the tests: waiting on conditions, observing processes, running scripts."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import uvloop

import anypool
import workers
from anypool.backends._base import Feature
from anypool.backends.local import forkserver
from anypool.backends.local.backend import LocalBackend
from anypool.backends.local.handle import WorkerHandle
from anypool.backends.local.transport import MessageChannel
from anypool.backends.local.workers import WorkerCache
from anypool.backends.ray.backend import RayBackend

ROOT = Path(__file__).resolve().parent.parent

ALL_BACKENDS = [
    "asyncio",
    ("asyncio", {"loop_factory": uvloop.new_event_loop}),
    "trio",
]
BACKEND_IDS = ["asyncio", "asyncio+uvloop", "trio"]
ASYNCIO_BACKENDS = ALL_BACKENDS[:2]
ASYNCIO_BACKEND_IDS = BACKEND_IDS[:2]

POLL_INTERVAL = 0.01

# --- backends -------------------------------------------------------------------------------


def _ray_pool(*args: Any, **kwargs: Any) -> anypool.Pool:
    return anypool.Pool(*args, backend=RayBackend(), **kwargs)


DASK_CLIENT: list[Any] = []
"""The session's ``distributed.Client`` of its LocalCluster, once the ``dask_session`` fixture
has started it."""


def _dask_pool(*args: Any, **kwargs: Any) -> anypool.Pool:
    from anypool.backends import DaskBackend

    return anypool.Pool(*args, backend=DaskBackend(DASK_CLIENT[0]), **kwargs)


@dataclasses.dataclass(frozen=True)
class ContractBackend:
    """A backend the contract tests run on, and where its documented promises differ from the
    local pool's (docs/distributed.md, the feature table): tests check each backend against
    what it promises, never less."""

    make_pool: Callable[..., anypool.Pool]
    """Makes a pool on this backend from :class:`anypool.Pool`'s arguments."""

    unsupported: frozenset[Feature]
    """What the backend's class declares it cannot do (``Backend.unsupported``)."""

    reaps_before_cancel_returns: bool = True
    """A cancelled call's process is reaped before the cancellation leaves ``pool.run``; else
    it is gone within :data:`KILL_CONFIRMATION` seconds (Ray: its raylet reaps it)."""

    reports_exits: bool = True
    """:class:`anypool.BrokenWorkerError` carries the dead worker's pid, exit code and signal
    (Ray does not tell them: ``None``)."""

    closes_generators: bool = True
    """Leaving a stream early closes its generator (``GeneratorExit``: its ``finally`` runs);
    else the process running it is killed."""

    least_stream_bound: int = 1
    """A stream's generator runs at most ``max(buffer, least_stream_bound)`` items ahead of
    its consumer (Ray: a batch being read, one unread, one held back, the task's hand-over
    and an item: 5 at the least)."""

    delivers_items_before_a_crash: bool = True
    """A stream whose process dies delivers every item its generator yielded before (Ray's and
    Dask's batches: items the generator yielded while the last batch was being sent are
    lost)."""

    owns_workers: bool = True
    """The pool's workers are its own processes: ``stats()`` counts them, a worker serves call
    after call, and they end with the pool (Ray's worker processes are Ray's)."""


KILL_CONFIRMATION = 10.0
"""How long a killed process may take to be gone where ``reaps_before_cancel_returns`` is
false (docs/distributed.md: a moment on a busy machine; the tests allow this)."""

POOL_BACKENDS: dict[str, ContractBackend] = {
    "local": ContractBackend(anypool.Pool, LocalBackend.unsupported),
    "ray": ContractBackend(
        _ray_pool,
        RayBackend.unsupported,
        reaps_before_cancel_returns=False,
        reports_exits=False,
        closes_generators=False,
        least_stream_bound=5,
        delivers_items_before_a_crash=False,
        owns_workers=False,
    ),
    "dask": ContractBackend(
        _dask_pool,
        # (Not DaskBackend's: Dask may be absent where the default suite runs.)
        frozenset({Feature.CHANNEL, Feature.QUEUE}),
        # The child process is killed before the cancellation returns; its Dask worker reaps
        # it a moment later.
        reaps_before_cancel_returns=False,
        closes_generators=False,
        least_stream_bound=5,
        delivers_items_before_a_crash=False,
        owns_workers=False,
    ),
}
"""The backends the contract tests run on, by name. Adding a backend to the contract tests is
one entry here and, for an engine, a marker of its own (its runs carry it: see
``conftest.pytest_generate_tests``). A contract test runs on every backend but those its
``backends`` marker leaves out (tests of the local backend's own mechanics: start methods,
initializer, idle_timeout, kill_grace, max_tasks_per_worker) and those without the features its
``needs`` marker names (tests/test_backends.py and test_ray.py check that those are refused)."""

_contract_backend = "local"


def contract_pool(*args: Any, **kwargs: Any) -> anypool.Pool:
    """A pool on the backend the running contract test is parametrized with (see the
    ``contract_backend`` fixture), from :class:`anypool.Pool`'s arguments."""
    return contract().make_pool(*args, **kwargs)


def contract() -> ContractBackend:
    """The backend the running contract test is parametrized with."""
    return POOL_BACKENDS[_contract_backend]


async def killed(pid: int) -> bool:
    """Whether the process ``pid``, which ran a call just cancelled (or whose pool just
    ended), is gone as the running contract test's backend promises: reaped already, or dead
    within :data:`KILL_CONFIRMATION` seconds."""
    if contract().reaps_before_cancel_returns:
        return gone(pid)
    return await wait_until_async(lambda: dead(pid), KILL_CONFIRMATION)


async def assert_pool_serves(pool: anypool.Pool, pid: int | None = None) -> None:
    """The pool returns the right result for a plain call, on worker ``pid`` if given where
    the pool's workers are its own (on Ray, any of Ray's may run it)."""
    assert await pool.run(workers.square, 7) == 49
    if pid is not None and contract().owns_workers:
        assert await pool.run(workers.current_pid) == pid, "the worker was replaced"


def where_local(**options: Any) -> dict[str, Any]:
    """``options`` of the local backend (``kill_grace``...) that a contract test passes only to
    go faster: none on a backend that takes its own options."""
    return options if contract().owns_workers else {}


def assert_items_before_a_crash(received: list[Any], yielded: list[Any]) -> None:
    """What a stream whose process died delivered: every item its generator yielded before,
    or, where the backend does not promise that (Ray, Dask), the first of them."""
    if contract().delivers_items_before_a_crash:
        assert received == yielded
    else:
        assert received == yielded[: len(received)], "not the first items yielded"


def use_contract_backend(name: str) -> None:
    global _contract_backend
    _contract_backend = name


def local_workers(pool: anypool.Pool) -> WorkerCache:
    """The local backend's workers and the calls waiting for them: for the tests of that
    backend's own mechanics, which nothing public shows."""
    backend = pool.backend
    assert isinstance(backend, LocalBackend)
    return backend.workers


def stand_in_worker(
    pool: anypool.Pool, target: Callable[[multiprocessing.connection.Connection], None]
) -> WorkerHandle:
    """Put a process that runs ``target(its end of the pipe)`` in the pool's idle slot, as if
    it were a worker: for races that cannot be provoked from outside. (The pool must use the
    fork start method, so that ``target`` need not be importable.)"""
    parent_end, child_end = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(target=target, args=(child_end,))
    process.start()
    child_end.close()
    worker = WorkerHandle(process, MessageChannel(os.dup(parent_end.fileno())))
    parent_end.close()
    local_workers(pool).idle.append(worker)
    return worker


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(POLL_INTERVAL)
    return True


async def wait_until_async(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Like :func:`wait_until`, but lets the event loop run meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        await anyio.sleep(POLL_INTERVAL)
    return True


async def stays_true(predicate: Callable[[], object], duration: float) -> bool:
    """Whether ``predicate`` holds at every poll for ``duration`` seconds, the event loop
    running meanwhile (so that whatever could make it false gets the chance)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not predicate():
            return False
        await anyio.sleep(POLL_INTERVAL)
    return bool(predicate())


async def read_pid(path: Path, timeout: float = 20.0) -> int:
    """The pid a worker wrote to ``path`` (see :func:`workers.write_pid`), once it is there."""
    assert await wait_until_async(path.exists, timeout), f"no worker wrote {path.name}"
    return int(path.read_text())


def read_pid_blocking(path: Path, timeout: float = 20.0) -> int:
    assert wait_until(path.exists, timeout), f"no worker wrote {path.name}"
    return int(path.read_text())


# --- processes ------------------------------------------------------------------------------


def helper_pids() -> set[int]:
    """anypool's fork server and multiprocessing's resource tracker: process-wide, not any
    pool's."""
    pids = {
        forkserver.server_pid(),
        multiprocessing.resource_tracker._resource_tracker._pid,  # type: ignore[attr-defined]
    }
    return {pid for pid in pids if pid is not None}


def helper_fds() -> set[int]:
    """This process's descriptors of the process-wide helpers: its end of the fork server's
    socket (a server killed by a test is replaced by another, on another socket)."""
    control = forkserver._server.control
    return set() if control is None else {control.fileno()}


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what they point to."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        # The descriptor that listed the directory is closed by now: skip it.
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


ENGINE_PROCESSES: set[int] = set()
"""The processes a session's engine started (a local Ray's GCS, raylet and helpers; a Dask
LocalCluster's nannies and workers): theirs, and their descendants (Ray's worker pool, the
children a Dask worker runs calls in), are the engine's to manage, not a test's."""


def descendants() -> dict[int, psutil.Process]:
    """Every live or zombie descendant of this process but multiprocessing's helpers and, while a
    session's engine runs, its processes (:data:`ENGINE_PROCESSES`)."""
    helpers = helper_pids()
    found = {}
    for process in psutil.Process().children(recursive=True):
        if process.pid not in helpers and not _engines(process):
            found[process.pid] = process
    return found


def _engines(process: psutil.Process) -> bool:
    if not ENGINE_PROCESSES:
        return False
    try:
        lineage = [process.pid, *(parent.pid for parent in process.parents())]
    except psutil.Error:
        # Gone meanwhile (Ray reaps the workers it kills as they are listed): no descendant to
        # report, not even once (a test asserts pool_processes() == set() just once).
        return not psutil.pid_exists(process.pid)
    return not ENGINE_PROCESSES.isdisjoint(lineage)


def pool_processes() -> set[int]:
    return set(descendants())


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited and been reaped (a zombie still exists)."""
    return not psutil.pid_exists(pid)


def dead(pid: int) -> bool:
    """Whether ``pid`` has exited, reaped or not (for processes that are not ours to reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- cancellation scenarios -----------------------------------------------------------------


class Victim:
    """A call that records its worker's pid and then sleeps for a minute: it ends only if the
    worker is killed.

    ``run()`` records whether that pid still existed at the moment the cancellation came out of
    ``pool.run`` (the spec: by then the worker is reaped).
    """

    def __init__(self, pool: anypool.Pool, tmp_path: Path, name: str = "victim") -> None:
        self.pool = pool
        self.pid_file = tmp_path / f"{name}.pid"
        self.cancelled = False
        self.pid_existed_when_cancelled: bool | None = None

    async def run(self) -> None:
        try:
            await self.pool.run(workers.write_pid_and_sleep, self.pid_file, 60)
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            if self.pid_file.exists():
                self.pid_existed_when_cancelled = psutil.pid_exists(int(self.pid_file.read_text()))
            raise
        raise AssertionError("the victim's call returned instead of being cancelled")

    async def started(self) -> int:
        """Wait until the worker runs the call; its pid."""
        return await read_pid(self.pid_file)

    @property
    def pid(self) -> int:
        return int(self.pid_file.read_text())

    async def assert_killed(self) -> None:
        """The cancellation came out of ``pool.run`` with the worker gone as the backend
        promises: reaped by then (local), or dead soon after (see :func:`killed`)."""
        assert self.cancelled, "pool.run did not raise the cancellation"
        if contract().reaps_before_cancel_returns:
            assert self.pid_existed_when_cancelled is False, (
                f"worker {self.pid} still existed when the cancellation left pool.run"
            )
        else:
            assert await killed(self.pid), f"worker {self.pid} outlived the cancellation"


@asynccontextmanager
async def bystander_call(pool: anypool.Pool, tmp_path: Path) -> AsyncIterator[int]:
    """A call running on another worker for the duration of the block; yields its worker's pid.

    On leaving the block the call is let finish and must return normally.
    """
    pid_file = tmp_path / "bystander.pid"
    release = tmp_path / "bystander.release"
    results: list[int] = []

    async def call() -> None:
        results.append(await pool.run(workers.write_pid_and_wait_for, pid_file, release))

    async with anyio.create_task_group() as group:
        group.start_soon(call)
        pid = await read_pid(pid_file)
        yield pid
        assert psutil.pid_exists(pid), "the bystander's worker was killed too"
        release.touch()
    assert results == [pid], "the bystander's call did not complete normally"


# --- scripts --------------------------------------------------------------------------------


def script_environment() -> dict[str, str]:
    """The environment for a script: imports anypool from this checkout."""
    paths = [str(ROOT / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def write_script(tmp_path: Path, code: str, name: str = "script.py") -> Path:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    return script


def run_script(script: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with this interpreter as a user would; expect exit status 0.

    Its output goes to files, not pipes: a process it leaves behind holding them cannot make
    this wait.
    """
    return _run_python([str(script), *args], script.parent, timeout)


def run_module(directory: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module`` in ``directory``, as :func:`run_script` runs a script."""
    return _run_python(["-m", module, *args], directory, 60.0)


def _run_python(
    arguments: list[str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.run(
            [sys.executable, *arguments],
            cwd=cwd,
            env=script_environment(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            timeout=timeout,
            check=False,
        )
        stdout.seek(0)
        stderr.seek(0)
        process.stdout, process.stderr = stdout.read(), stderr.read()
    assert process.returncode == 0, (
        f"{' '.join(arguments)} exited with {process.returncode}\n"
        f"--- stdout\n{process.stdout}\n--- stderr\n{process.stderr}"
    )
    return process


# A shell starts a foreground job with SIGINT at its default action, whatever its own. Started
# from a test run that ignores SIGINT (a background job of a script, `make test &`, ignores it),
# a script would ignore it too (an ignored signal stays ignored across exec; Python then installs
# no KeyboardInterrupt handler), and the Ctrl-C a test sends it would do nothing.
_AS_FOREGROUND_JOB = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def start_script(script: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``script`` in a session of its own, as a shell starts a foreground job: Ctrl-C
    (SIGINT) at its default action."""
    return subprocess.Popen(
        [sys.executable, "-c", _AS_FOREGROUND_JOB, str(script), *args],
        cwd=script.parent,
        env=script_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
