"""A busy machine, made on purpose: processes that burn CPU, and loops that keep starting
short-lived processes (Python interpreters, and forks that exit at once), as another test suite
run beside this one does. The forks matter: each new process wakes the scheduler, which then
preempts a running process for a moment, as CPU hogs alone never make it do.

It is bounded in time: every load process stops by itself at its deadline, and dies with the
thread that started it (``PR_SET_PDEATHSIG``), so that neither an exception nor a killed test
run can leave one behind. Each runs in a session of its own: a signal sent to the process group
under test does not reach it.

From a test (the processes are stopped and reaped when the block is left, by an exception
too)::

    with machine_load(seconds=60):
        ...

As a script, it runs a command under the load and stops the load when the command ends (or at
its deadline); its exit status is the command's::

    python tests/load.py --seconds 1200 -- python -m pytest -m timing
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

HOGS = 2
"""Processes that burn CPU: as many as this 2-core machine has cores."""
SPAWNERS = 1
"""Loops that each keep starting short-lived processes."""
STARTED_TIMEOUT = 30.0
"""Seconds the load processes get to start (interpreter start-up on a loaded machine)."""
STOP_GRACE = 5.0
"""Seconds a load process gets to end after SIGTERM (a spawner reaps its child first)."""

_LOAD_PROCESS = "--load-process"


@dataclass
class Load:
    """The load processes of a :func:`machine_load` block."""

    deadline: float
    """``time.monotonic()`` at which every load process stops by itself."""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def running(self) -> bool:
        """Whether every load process still runs."""
        return all(process.poll() is None for process in self.processes)

    def stop(self) -> None:
        """Stop every load process and reap it, and the process a spawner was waiting for."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                # Each leads a process group of its own, with the child it may be waiting for.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def machine_load(
    seconds: float = 120.0, *, hogs: int = HOGS, spawners: int = SPAWNERS
) -> Iterator[Load]:
    """Run ``hogs`` CPU-burning processes and ``spawners`` process-starting loops while the
    block runs, for ``seconds`` at most. Enters the block once every one of them runs; stops
    and reaps all of them when the block is left. Call it from the main thread: the load dies
    with the thread that started it."""
    load = Load(time.monotonic() + seconds)
    ready_read, ready_write = os.pipe()
    try:
        for kind in ["cpu"] * hogs + ["spawn"] * spawners:
            load.processes.append(
                subprocess.Popen(
                    [
                        *(sys.executable, __file__, _LOAD_PROCESS, kind, str(seconds)),
                        *(str(os.getpid()), str(ready_write)),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    pass_fds=[ready_write],
                    start_new_session=True,
                )
            )
        os.close(ready_write)
        ready_write = -1
        _wait_until_started(ready_read, len(load.processes))
        yield load
    finally:
        if ready_write != -1:
            os.close(ready_write)
        os.close(ready_read)
        load.stop()


def _wait_until_started(ready_read: int, count: int) -> None:
    """Wait until ``count`` load processes wrote that they run."""
    deadline = time.monotonic() + STARTED_TIMEOUT
    started = 0
    while started < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([ready_read], [], [], remaining)[0]:
            raise RuntimeError(f"{count - started} load processes did not start in time")
        chunk = os.read(ready_read, count)
        if not chunk:
            raise RuntimeError(f"{count - started} load processes exited as they started")
        started += len(chunk)


def _run_load_process(kind: str, seconds: str, parent: str, ready: str) -> None:
    """The body of one load process: burn CPU (``kind`` "cpu") or start processes ("spawn")
    until SIGTERM or ``seconds`` have passed."""
    import ctypes

    deadline = time.monotonic() + float(seconds)
    # Die with the thread that started the load: nothing else would stop this one early.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):
        return  # it died before the line above
    stopping: list[int] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    os.write(int(ready), b"+")
    os.close(int(ready))
    if kind == "cpu":
        while not stopping and time.monotonic() < deadline:
            for _ in range(10_000):
                pass
        return
    # Each round starts an interpreter and waits for it to exit, then forks children that exit
    # at once, and reaps each, for as long again (hundreds a second). A child waited for is
    # reaped even when SIGTERM comes meanwhile (PEP 475: the wait goes on after the handler).
    while not stopping and time.monotonic() < deadline:
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=False)
        forking_until = min(2 * time.monotonic() - started, deadline)
        while not stopping and time.monotonic() < forking_until:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)


def main() -> int:
    if sys.argv[1:2] == [_LOAD_PROCESS]:
        _run_load_process(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description="Run a command on a machine made busy.")
    parser.add_argument("--seconds", type=float, default=1200.0, help="the load's deadline")
    parser.add_argument("--hogs", type=int, default=HOGS, help="CPU-burning processes")
    parser.add_argument("--spawners", type=int, default=SPAWNERS, help="process-starting loops")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command [argument ...]")
    options = parser.parse_args()
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("no command to run")
    with machine_load(options.seconds, hogs=options.hogs, spawners=options.spawners):
        print(
            f"load.py: {options.hogs} CPU hogs and {options.spawners} process spawners, for "
            f"{options.seconds:g} s at most, beside: {' '.join(command)}",
            file=sys.stderr,
            flush=True,
        )
        process = subprocess.Popen(command)
        # Ctrl-C reaches the command, in this foreground process group: let it end as it sees
        # fit, and wait for it; the load is stopped then.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return process.wait()


if __name__ == "__main__":
    sys.exit(main())
