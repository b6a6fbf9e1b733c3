"""anypool's fork server: the process that forks the workers of the forkserver start method.

It is a fresh interpreter that imports the worker module and then forks a worker for each
request of the parent's; a worker runs the worker loop the moment it is forked. multiprocessing's
forkserver would import multiprocessing first (some 20 ms on the way of every cold start), and
its workers would import the application's main module again before their first call (anypool
pickles what the main module defines by value: workers never need it). The modules the parent
asks it to preload (see ``anypool.backends.local.forkserver``) are imported while no request
waits, so that a cold start never waits for them, and the workers forked later start with them.

The parent and the server talk over one socket pair, which no other process can reach. The
parent's first message says what the server needs to stand in for it (see ``Boot``); each next
one asks for a worker (see ``Request``) and carries two descriptors: the worker's end of its
pipe, and the write end of a status pipe. On the status pipe the server writes the worker's pid
as it forks it, and its exit code (negative for a signal, as multiprocessing's) once it exits.
The server exits when the parent's end closes; its workers then die with it (see ``lifeline``).

Imported by the server process only: like the worker module, it must stay free of anyio,
typing and multiprocessing (tests/test_architecture.py).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import sys

from .. import wire
from . import worker

TYPE_CHECKING = False  # as typing's: the server starts without typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

__all__ = ["main"]


def main(control_fd: int) -> None:
    """Serve the parent's requests on ``control_fd`` until it closes."""
    # Ctrl-C reaches every process of the terminal's foreground group: it is for the parent,
    # which cancels its calls and stops its workers. Workers are forked with it ignored too,
    # so that none dies of it on the way to the worker loop (which ignores it as well).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    boot, fds = _receive(control)
    if boot is None:
        return
    _stand_in_for_parent(boot, fds)
    _Server(control).serve()


class _Server:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.status_fds: dict[int, int] = {}
        """The write end of each live worker's status pipe, by pid."""
        self.wake_fds = (-1, -1)
        self.to_preload: list[str] = []
        self.preloaded: set[str] = set()

    def serve(self) -> None:
        # SIGCHLD wakes the poll below through the wake-up descriptor. (The handler must be a
        # Python one for that: with the default, the signal is discarded.)
        wake_r, wake_w = self.wake_fds = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)
        poller = select.poll()
        poller.register(self.control.fileno(), select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            # Preloads only while no request waits: a worker never waits for one.
            events = poller.poll(0 if self.to_preload else None)
            if not events:
                self._preload(self.to_preload.pop(0))
                continue
            for fd, _ in events:
                if fd == wake_r:
                    os.read(wake_r, 4096)
                    self._report_exits()
                elif not self._fork_requested():
                    return

    def _fork_requested(self) -> bool:
        """Fork the worker the parent asks for; ``False`` once the parent has gone."""
        request: wire.ForkRequest | None
        request, fds = _receive(self.control)
        if request is None:
            return False
        pipe_fd, status_fd = fds
        self.to_preload += [name for name in request.preload if name not in self.preloaded]
        self.preloaded.update(request.preload)
        try:
            pid = os.fork()
        except OSError as error:
            # Out of processes or memory: the parent raises it for the call.
            os.close(pipe_fd)
            _write_signed(status_fd, -(error.errno or 1))
            os.close(status_fd)
            return True
        if pid == 0:
            os.close(status_fd)
            self._run_worker(pipe_fd, request)
        os.close(pipe_fd)
        self.status_fds[pid] = status_fd
        _write_signed(status_fd, pid)
        return True

    def _run_worker(self, pipe_fd: int, request: wire.ForkRequest) -> None:
        """In the forked worker: leave the server's part, serve calls, exit."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.control.close()
            for fd in [*self.wake_fds, *self.status_fds.values()]:
                os.close(fd)
            # As multiprocessing does for each worker: what the parent has now, not at boot.
            if os.getcwd() != request.cwd:
                os.chdir(request.cwd)
            sys.path[:] = request.sys_path
            worker.main(pipe_fd, request.config)
            code = 0
        except SystemExit as exit:
            # As the interpreter exits on it: None is success, a message goes to stderr.
            if exit.code is None or isinstance(exit.code, int):
                code = exit.code or 0
            else:
                print(exit.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            # os._exit skips the flush at exit.
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os._exit(code)

    def _report_exits(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            fd = self.status_fds.pop(pid, None)
            if fd is not None:
                _write_signed(fd, os.waitstatus_to_exitcode(status))
                os.close(fd)

    def _preload(self, name: str) -> None:
        # Anything may go wrong in an application's module imported in another process
        # (argparse calling sys.exit(), say): the worker that needs it imports it again and
        # sees the error there, where it belongs.
        with contextlib.suppress(BaseException):
            __import__(name)


def _ignore(signum: int, frame: Any) -> None:
    pass


def _stand_in_for_parent(boot: wire.ForkserverBoot, fds: list[int]) -> None:
    """What a worker would have inherited from the parent had it been forked from it."""
    sys.path[:] = boot.sys_path
    sys.argv[:] = boot.sys_argv

    # multiprocessing reads these at its import, in a worker that uses it (say, a Manager's
    # proxy connects back with the parent's key, and SharedMemory registers with the parent's
    # resource tracker, which would otherwise unlink it as the worker exits).
    def use_parents_key(process: ModuleType) -> None:
        process.current_process().authkey = boot.authkey

    fixes: dict[str, Callable[[ModuleType], None]] = {"multiprocessing.process": use_parents_key}
    if fds:

        def use_parents_tracker(resource_tracker: ModuleType) -> None:
            resource_tracker._resource_tracker._fd = fds[0]

        fixes["multiprocessing.resource_tracker"] = use_parents_tracker
    # Something that starts with every interpreter (a .pth file: coverage's, say) may have
    # imported them already.
    for name in [name for name in fixes if name in sys.modules]:
        fixes.pop(name)(sys.modules[name])
    sys.meta_path.insert(0, _FixAfterImport(fixes))


class _FixAfterImport:
    """Runs a function on a module just after it is first imported (a meta path finder that
    defers to the others, and wraps the loader they find)."""

    def __init__(self, fixes: dict[str, Callable[[ModuleType], None]]) -> None:
        self.fixes = fixes

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        fix = self.fixes.pop(name, None)
        if fix is None:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = _then(spec.loader.exec_module, fix)
                return spec
        return None


def _then(
    exec_module: Callable[[ModuleType], None], fix: Callable[[ModuleType], None]
) -> Callable[[ModuleType], None]:
    def exec_then_fix(module: ModuleType) -> None:
        exec_module(module)
        fix(module)

    return exec_then_fix


def _receive(control: socket.socket) -> tuple[Any, list[int]]:
    """The parent's next message and the descriptors that came with it; ``None`` once the
    parent has gone."""
    try:
        header, fds, _, _ = socket.recv_fds(control, wire.NUMBER.size, 2)
    except OSError:
        return None, []
    if len(header) < wire.NUMBER.size:
        return None, []
    (size,) = wire.NUMBER.unpack(header)
    body = bytearray()
    while len(body) < size:
        part = control.recv(size - len(body))
        if not part:
            return None, []
        body += part
    return pickle.loads(body), fds


def _write_signed(fd: int, value: int) -> None:
    # OSError: the parent closed its end; it wants nothing more of this worker.
    with contextlib.suppress(OSError):
        os.write(fd, wire.NUMBER.pack(value))
