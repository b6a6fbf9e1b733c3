"""The parent's side of anypool's fork server (``child.forkserver``, which says why it is not
multiprocessing's): start it, ask it for workers, and tell when they exit.

One server serves every pool of the process that uses the forkserver start method. It starts
with the first worker, and exits with this process (or once this process has stopped its pools
at interpreter exit).
"""

from __future__ import annotations

import ast
import atexit
import functools
import importlib.util
import multiprocessing
import os
import pickle
import select
import socket
import subprocess
import sys
import threading
from multiprocessing import resource_tracker

from . import wire

__all__ = ["ForkedProcess", "ensure_running", "server_pid", "start_worker"]

_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from anypool.backends.local.child.forkserver import main; main(int(sys.argv[2]))"
)
# The folder anypool is imported from (src/anypool/backends/local/forkserver.py).
_IMPORTED_FROM = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)


class ForkedProcess:
    """A worker forked by the fork server: what of ``multiprocessing.Process`` the pool uses.

    The worker is the server's child, not this process's: the server reaps it and reports its
    exit code on the status pipe, whose read end is the ``sentinel``.
    """

    def __init__(self, pid: int, sentinel: int) -> None:
        self.pid = pid
        self.sentinel = sentinel
        self._exitcode: int | None = None
        os.set_blocking(sentinel, False)

    @property
    def exitcode(self) -> int | None:
        """The exit code once the worker has exited (negative: the signal that ended it), else
        ``None``. 255 if the server went away before telling (as multiprocessing's)."""
        if self._exitcode is None and self.sentinel >= 0:
            try:
                code = _read_signed(self.sentinel)
            except BlockingIOError:
                return None
            self._exitcode = 255 if code is None else code
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds (forever if ``None``) for the worker to exit."""
        if self.exitcode is None:
            poller = select.poll()
            poller.register(self.sentinel, select.POLLIN)
            poller.poll(None if timeout is None else max(0, int(timeout * 1000)))

    def close(self) -> None:
        """Release the status pipe."""
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def start_worker(pipe_fd: int, config: bytes) -> ForkedProcess:
    """Have the fork server fork a worker that serves the pipe end ``pipe_fd`` (a copy: the
    caller keeps and closes its own), configured by the pickled ``WorkerConfig`` ``config``.
    Starts the server first where none runs. Blocks until the worker exists."""
    return _server.start_worker(pipe_fd, config)


def ensure_running() -> int:
    """Start the fork server unless it runs; its process id."""
    with _server.lock:
        if _server.process is None or _server.process.poll() is not None:
            _server.stop()
            _server.start()
        assert _server.process is not None
        return _server.process.pid


def server_pid() -> int | None:
    """The fork server's process id, if it runs."""
    process = _server.process
    return None if process is None else process.pid


class _Forkserver:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.control: socket.socket | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start_worker(self, pipe_fd: int, config: bytes) -> ForkedProcess:
        with self.lock:
            # A server that has gone (killed, say) is replaced once.
            for attempt in range(2):
                if self.control is None:
                    self.start()
                assert self.control is not None
                status_r, status_w = os.pipe()
                try:
                    _send(
                        self.control,
                        wire.ForkRequest(os.getcwd(), sys.path, _preload(), config),
                        [pipe_fd, status_w],
                    )
                except OSError:
                    pid = None
                else:
                    # Ours closed first: the server's copy alone keeps the pipe open, so that
                    # its end reads as end-of-file should the server go away.
                    os.close(status_w)
                    status_w = -1
                    pid = _read_signed(status_r)
                finally:
                    if status_w >= 0:
                        os.close(status_w)
                if pid is not None and pid > 0:
                    return ForkedProcess(pid, status_r)
                os.close(status_r)
                if pid is not None:
                    # The server could not fork (out of processes or memory): -errno.
                    raise OSError(-pid, os.strerror(-pid))
                self.stop()
                if attempt:
                    raise OSError("anypool's fork server ended as it was asked for a worker")
        raise AssertionError("unreachable")

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:
            fd = theirs.fileno()
            self.process = subprocess.Popen(
                # With the interpreter's options (-X, -W, -O...), as multiprocessing's.
                [
                    sys.executable,
                    *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
                    "-c",
                    _BOOT,
                    _IMPORTED_FROM,
                    str(fd),
                ],
                pass_fds=[fd],
                # As multiprocessing's workers have it: a worker (or a module the server
                # preloads) that reads stdin gets end-of-file, not the terminal's input.
                stdin=subprocess.DEVNULL,
            )
        self.control = ours
        # Workers share this process's resource tracker, as multiprocessing's own do: one of
        # their own would unlink the SharedMemory they attach to as they exit.
        resource_tracker.ensure_running()
        tracker_fd = resource_tracker._resource_tracker._fd  # type: ignore[attr-defined]
        authkey = bytes(multiprocessing.current_process().authkey)
        _send(
            ours,
            wire.ForkserverBoot(sys.path, sys.argv, authkey),
            [] if tracker_fd is None else [tracker_fd],
        )

    def stop(self) -> None:
        """Let the server go (it exits as its end of the socket closes) and reap it."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process is not None:
            try:
                self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def forget_after_fork(self) -> None:
        # In a process forked from this one: the server is not its child, nor its to stop. A
        # pool there starts a server of its own.
        self.lock = threading.Lock()
        if self.control is not None:
            self.control.close()
        self.control = None
        self.process = None


_server = _Forkserver()
os.register_at_fork(after_in_child=_server.forget_after_fork)
# Registered before any pool's handler (imported ahead of them): runs after them, once the
# pools have let their workers go.
atexit.register(_server.stop)


def _send(control: socket.socket, message: object, fds: list[int]) -> None:
    body = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    # The descriptors go with the first bytes, which the server reads first.
    header = wire.NUMBER.pack(len(body))
    socket.send_fds(control, [header], fds)
    control.sendall(body)


def _read_signed(fd: int) -> int | None:
    """The next number on a status pipe; ``None`` at end of file (the server went away)."""
    data = os.read(fd, wire.NUMBER.size)
    return wire.NUMBER.unpack(data)[0] if data else None


def _preload() -> list[str]:
    """The modules the server is to import for the workers it forks: cloudpickle where this
    process has pickled by value already (a function of the main module, a lambda), which
    every call then needs; what the main module imports (see :func:`_main_module_imports`);
    and what the application asked multiprocessing's forkserver to preload."""
    names = ["cloudpickle"] if "cloudpickle" in sys.modules else []
    forkserver = sys.modules.get("multiprocessing.forkserver")
    state = getattr(forkserver, "_forkserver", None)
    asked = list(getattr(state, "_preload_modules", ["__main__"]))
    if "__main__" in asked:
        names += _main_module_imports()
    return names + [name for name in asked if name != "__main__"]


@functools.cache
def _main_module_imports() -> tuple[str, ...]:
    """The modules the main module (a script, or a module run with ``-m``) imports at its top
    level, which the calls of an application's pools likely need too (its functions are
    pickled by value, and import them as they are unpickled): the modules already imported
    here."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return ()
    # A script's relative imports cannot resolve: they are skipped below.
    package = spec.parent if spec is not None else None
    try:
        with open(path, "rb") as source:
            statements = ast.parse(source.read()).body
    except (OSError, SyntaxError, ValueError):
        return ()
    names: list[str] = []
    for statement in statements:
        if isinstance(statement, ast.Import):
            names += [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom):
            try:
                module = importlib.util.resolve_name(
                    "." * statement.level + (statement.module or ""), package
                )
            except (ImportError, ValueError):
                continue
            names.append(module)
            # `from package import module` imports the module too.
            names += [f"{module}.{alias.name}" for alias in statement.names]
    return tuple(name for name in dict.fromkeys(names) if name in sys.modules)
