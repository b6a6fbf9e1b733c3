"""What runs in a Dask worker: each call in a child process of the worker's (:mod:`.child`),
which :func:`kill_call` kills when the call's caller is cancelled.

Dask cannot stop a task that runs (dask/distributed#4694): a cancelled task runs to its end,
and the next task on that worker waits for it. Here the task only hands the call to a child and
waits; the child is the one killed. Which child runs which call is known in this process alone,
under one lock, so a kill reaches the call it names or nothing: never the next call.

Imported by Dask workers (by reference, as these functions are): it must stay free of anyio,
and import Dask nowhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Final

from ..._serialize import with_pickle_buffers
from .child import read_frame, write_frame

__all__ = ["CANCELLED", "DIED", "kill_call", "run_call"]

DIED: Final = 200
"""The outcome of a call whose child process died: ``(DIED, (pid, exit status))``."""
CANCELLED: Final = 201
"""The outcome of a call killed (or refused) by :func:`kill_call`: ``(CANCELLED, None)``."""

_FORGET_CANCELLED = 600.0
"""How long a cancellation of a call that had not started here is remembered."""


class _Child:
    """A process that runs calls, and the two pipes to it."""

    def __init__(self) -> None:
        calls_read, calls_write = os.pipe()
        outcomes_read, outcomes_write = os.pipe()
        code = f"from anypool.backends.dask.child import main; main({calls_read}, {outcomes_write})"
        try:
            # Not multiprocessing: a Dask worker is a daemonic process, which may not have
            # multiprocessing children.
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(calls_read, outcomes_write), close_fds=True
            )
        finally:
            os.close(calls_read)
            os.close(outcomes_write)
        self.calls: BinaryIO = os.fdopen(calls_write, "wb")
        self.outcomes: BinaryIO = os.fdopen(outcomes_read, "rb")
        self.killed = False

    def run(self, message: Any) -> tuple[int, Any]:
        write_frame(self.calls, message)
        outcome: tuple[int, Any] = read_frame(self.outcomes)
        return outcome

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(OSError):  # (gone already)
            self.process.send_signal(signal.SIGKILL)

    def reap(self) -> tuple[int, int]:
        """Close the pipes and wait for the process; its pid and exit status."""
        for pipe in (self.calls, self.outcomes):
            with contextlib.suppress(OSError):  # (a write cut short by the process's death)
                pipe.close()
        return self.process.pid, self.process.wait()


_lock = threading.Lock()
_idle: list[_Child] = []
_running: dict[str, _Child] = {}
_cancelled: dict[str, float] = {}


def run_call(call_id: str, sys_path: tuple[str, ...], payload: Any) -> tuple[int, Any]:
    """Run the pickled call in a child process of this worker; its outcome as a local worker
    sends it (``(RESULT, pickled result)``, ``(ERROR, pickled ErrorReport)``), or
    ``(DIED, (pid, exit status))``, or ``(CANCELLED, None)`` once :func:`kill_call` named it."""
    with _lock:
        if _cancelled.pop(call_id, None) is not None:
            return CANCELLED, None
        child = _idle.pop() if _idle else None
    if child is None:
        child = _Child()  # (outside the lock: it takes a while)
    with _lock:
        if _cancelled.pop(call_id, None) is not None:
            _idle.append(child)
            return CANCELLED, None
        _running[call_id] = child
    try:
        # (Dask hands large buffers over as memoryviews, which only a PickleBuffer pickles.)
        outcome = child.run((sys_path, with_pickle_buffers(payload)))
    except (EOFError, OSError):
        outcome = None  # the child died
    with _lock:
        _running.pop(call_id, None)
        killed = child.killed
        if outcome is not None and not killed:
            _idle.append(child)
            return outcome
    died = child.reap()
    return (CANCELLED, None) if killed else (DIED, died)


def kill_call(call_id: str) -> bool:
    """Kill the child running the call ``call_id``, if it runs here; else remember that it was
    cancelled, should it start here yet (Dask may have handed it over already). Whether it ran
    here."""
    now = time.monotonic()
    with _lock:
        child = _running.pop(call_id, None)
        if child is not None:
            child.kill()
            return True
        _cancelled[call_id] = now
        for stale in [key for key, when in _cancelled.items() if now - when > _FORGET_CANCELLED]:
            del _cancelled[stale]
    return False


def stop_children() -> None:
    """Kill the idle children (the pool that used them has ended)."""
    with _lock:
        idle = list(_idle)
        _idle.clear()
    for child in idle:
        child.kill()
        child.reap()
