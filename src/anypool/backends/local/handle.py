"""The parent's handle on one worker process: start it, talk to it, stop it, reap it."""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import weakref
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

import anyio

from .._base import QueueStatus, find_queue
from . import forkserver, wire
from .child.worker import main_of_process
from .transport import MessageChannel

__all__ = ["CAN_PAUSE", "WorkerHandle"]

# The parent's ends of every live worker's pipe. A process forked from this one (a worker under
# the "fork" start method, or the application's own fork) must not keep copies of them: a worker
# whose parent end lives on in another process never sees end-of-file when the pool closes it.
_parent_ends: weakref.WeakSet[MessageChannel] = weakref.WeakSet()

CAN_PAUSE = os.path.exists(f"/proc/{os.getpid()}/stat")
"""Whether :meth:`WorkerHandle.pause` can tell when a process has stopped (it reads /proc)."""
_PAUSE_TIMEOUT = 0.1

# multiprocessing reads a child's exit status whenever anyone polls it, from any thread, and
# keeps it; two threads polling at once leave one of them without it (under fork, join() then
# returns with the process not reaped). Every Process.start() polls all the children
# multiprocessing knows of, in whichever thread starts a process (the event loop's of another
# pool, an application's), while the event loop's thread reaps them. So the pool's workers are
# its own: once started they are taken out of multiprocessing's list (which also keeps them out of
# active_children(), and out of reach of the application's threads), and starts go one at a
# time, so that no start of the pool's polls a worker before it is taken out.
_starting = threading.Lock()


def _forget_parent_ends_after_fork() -> None:
    for channel in list(_parent_ends):
        channel.forget_after_fork()
    _parent_ends.clear()


os.register_at_fork(after_in_child=_forget_parent_ends_after_fork)


class WorkerHandle:
    """One worker process and the parent's end of its pipe.

    Exactly one party owns a handle at a time (the call it runs, or the pool while it is idle),
    and only the owner waits on its pipe or its exit: anyio allows one waiter per descriptor.
    """

    __slots__ = (
        "_process",
        "call_started",
        "calls",
        "channel",
        "exitcode",
        "last_call_seconds",
        "pid",
        "queue_request",
        "queued_calls",
    )

    def __init__(
        self, process: BaseProcess | forkserver.ForkedProcess, channel: MessageChannel
    ) -> None:
        self._process = process
        self.channel = channel
        self.pid: int = process.pid  # type: ignore[assignment]  # set once started
        self.calls = 0
        self.call_started = 0.0
        """When the call it runs started (``time.monotonic()``)."""
        self.last_call_seconds = math.inf
        """How long its last call took, as the parent saw it."""
        self.queued_calls = 0
        """How many QUEUED calls it was sent (they are numbered)."""
        self.exitcode: int | None = None
        """The exit status once the process has been reaped, else ``None``."""
        self.queue_request: tuple[int, bytes | bytearray] | None = None
        """A queue request of the worker's that is not answered yet."""

    @classmethod
    def start(cls, context: BaseContext, config_blob: bytes) -> WorkerHandle:
        """Start a worker process. Blocks until the process exists (not until it is ready)."""
        parent_end, child_end = multiprocessing.Pipe()
        # The handle owns a descriptor of its own, so that collecting the Connection object never
        # closes it behind our back. It joins _parent_ends before the fork, so that a worker
        # forked here closes its copy of its own parent end too.
        channel = MessageChannel(os.dup(parent_end.fileno()))
        parent_end.close()
        _parent_ends.add(channel)
        process: BaseProcess | forkserver.ForkedProcess
        try:
            if context.get_start_method() == "forkserver":
                process = forkserver.start_worker(child_end.fileno(), config_blob)
            else:
                process = _start_process(context, child_end, config_blob)
        except BaseException:
            _parent_ends.discard(channel)
            channel.close()
            raise
        finally:
            child_end.close()
        return cls(process, channel)

    async def receive(self) -> tuple[int, bytes | bytearray]:
        """The worker's next message about its call; the queue requests it makes meanwhile
        are answered as they come. Cancellation loses nothing.

        Raises:
            ChannelClosed: the worker's end of the pipe closed.
        """
        while True:
            if self.queue_request is None:
                frame = await self.channel.receive()
                if frame[0] != wire.QUEUE_PUT and frame[0] != wire.QUEUE_GET:
                    return frame
                self.queue_request = frame
            await self._serve_queue_request()

    async def _serve_queue_request(self) -> None:
        """Answer the queue request the worker is waiting on (``queue_request``), once it can
        be answered. If this is cancelled before the reply is sent, the request stays for
        whoever reads the pipe next."""
        assert self.queue_request is not None
        kind, body = self.queue_request
        queue_id, block, timeout = wire.QUEUE_REQUEST.unpack_from(body)
        target = find_queue(queue_id)
        item = b""
        if target is None:
            status = QueueStatus.GONE
        elif kind == wire.QUEUE_PUT:
            put = bytes(body[wire.QUEUE_REQUEST.size :])
            status = await target.serve_put(put, block, timeout)
        else:
            status, item = await target.serve_get(block, timeout)
        self.queue_request = None
        # The worker reads while it waits for the reply, so this write finishes.
        with anyio.CancelScope(shield=True):
            await self.channel.send(wire.QUEUE_REPLY, wire.REPLY.pack(status) + item)

    def close_pipe(self) -> None:
        """Close the parent's end: an idle worker exits when it sees end-of-file."""
        _parent_ends.discard(self.channel)
        self.channel.close()

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` unless the process was already reaped."""
        if self.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def pause(self) -> bool:
        """Stop the process where it is (SIGSTOP) and wait until it has stopped: it writes
        nothing more until :meth:`resume`. ``False`` if that cannot be told (it exited, or
        stays busy in the kernel); it may then be running still, or be stopped."""
        self.signal(signal.SIGSTOP)
        # kill() returns before the process stops; /proc says when it has.
        deadline = time.monotonic() + _PAUSE_TIMEOUT
        while True:
            try:
                with open(f"/proc/{self.pid}/stat", "rb") as file:
                    stat = file.read()
            except OSError:
                return False
            # The state follows the command name, which is in parentheses and may hold any.
            state = stat[stat.rindex(b")") + 2]
            if state in b"Tt":
                return True
            if state in b"ZX" or time.monotonic() > deadline:
                return False
            os.sched_yield()

    def resume(self) -> None:
        """Let a process stopped by :meth:`pause` go on."""
        self.signal(signal.SIGCONT)

    def poll_exited(self) -> bool:
        """Reap the process if it has exited, without waiting."""
        if self.exitcode is None and self._process.exitcode is not None:
            self._reap()
        return self.exitcode is not None

    async def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to exit, and reap it if it did."""
        if self.poll_exited():
            return True
        with anyio.move_on_after(timeout) as scope:
            await anyio.wait_readable(self._process.sentinel)
        if scope.cancelled_caught:
            return self.poll_exited()
        self._reap()
        return True

    def _reap(self) -> None:
        # The sentinel fires as the process closes its descriptors, an instant before its exit
        # status can be collected: join() waits out that instant. close() then releases the
        # descriptors multiprocessing keeps for the process, and its entry in active_children().
        self._process.join()
        self.exitcode = self._process.exitcode
        self._process.close()

    async def stop(self, grace: float, *, terminate: bool, keep_pipe: bool = False) -> int | None:
        """End the process and reap it: SIGTERM first if ``terminate`` (else wait for it to exit
        after its pipe is closed), then SIGKILL once ``grace`` seconds have passed. With
        ``keep_pipe`` (and ``terminate``), the pipe stays open for the caller to read what is
        left in it, and to close.

        Shielded from cancellation: when this returns the process is gone. Returns its exit code.
        """
        if not keep_pipe:
            self.close_pipe()
        with anyio.CancelScope(shield=True):
            if terminate:
                self.signal(signal.SIGTERM)
            if not await self.wait_exited(grace):
                self.signal(signal.SIGKILL)
                await self.wait_exited(math.inf)
        return self.exitcode

    def stop_now(self, grace: float) -> None:
        """Blocking version of ``stop(grace, terminate=False)``, for interpreter exit."""
        self.close_pipe()
        if self.exitcode is not None:
            return
        self._process.join(grace)
        if self._process.exitcode is None:
            self.signal(signal.SIGKILL)
        self._reap()

    def __repr__(self) -> str:
        return f"<WorkerHandle pid={self.pid} calls={self.calls}>"


def _start_process(
    context: BaseContext, child_end: multiprocessing.connection.Connection, config_blob: bytes
) -> BaseProcess:
    """A worker started by multiprocessing (the fork and spawn start methods)."""
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=main_of_process,
        args=(child_end, config_blob),
        name="anypool-worker",
        # Not daemonic, so a worker may start processes of its own; the pool reaps it.
        daemon=False,
    )
    with _starting:
        process.start()
        # Looked up each time: a process started by multiprocessing gets a new list.
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
    return process
