"""What runs in a Dask worker: each call in a child process of the worker's (:mod:`.child`),
which :func:`kill_call` kills when the call's caller is cancelled.

Dask cannot stop a task that runs (dask/distributed#4694): a cancelled task runs to its end,
and the next task on that worker waits for it. Here the task only hands the call to a child and
waits; the child is the one killed. Which child runs which call is known in this process alone,
under one lock, so a kill reaches the call it names or nothing: never the next call.

A stream's generator runs in a child too (:func:`run_stream_call`); its batches reach the
caller through a Dask queue, one for each credit the caller gives through another: the
generator runs only as far ahead as the caller has room for.

Imported by Dask workers (by reference, as these functions are): it must stay free of anyio,
and import Dask only in what runs on a Dask worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Final

from ..._serialize import with_pickle_buffers
from .child import MORE, read_frame, read_raw_frame, write_frame

__all__ = ["CANCELLED", "DIED", "END", "kill_call", "run_call", "run_stream_call"]

DIED: Final = 200
"""The outcome of a call whose child process died: ``(DIED, (pid, exit status))``."""
CANCELLED: Final = 201
"""The outcome of a call killed (or refused) by :func:`kill_call`: ``(CANCELLED, None)``."""

END: Final = 202
"""The last record of a stream whose generator is over (its error, if any, came before)."""

_FORGET_CANCELLED = 600.0
"""How long a cancellation of a call that had not started here is remembered."""
_CREDIT_WAIT = 1.0
"""How often a stream that waits for its consumer's credit looks whether it was killed (its
consumer gives one as it leaves, which a terminated pool's may not have)."""


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
    child = _take_child(call_id)
    if child is None:
        return CANCELLED, None
    try:
        # (Dask hands large buffers over as memoryviews, which only a PickleBuffer pickles.)
        write_frame(child.calls, (sys_path, with_pickle_buffers(payload), None))
        outcome: tuple[int, Any] | None = read_frame(child.outcomes)
    except (EOFError, OSError):
        outcome = None  # the child died
    return _give_back(call_id, child, outcome)


def run_stream_call(
    call_id: str, sys_path: tuple[str, ...], payload: Any, batch: int, queue: str, credit: int
) -> None:
    """Run the pickled generator call in a child process of this worker, putting its batches
    (as ``_batches.run_stream`` makes them) into the Dask queue ``{queue}-items``: one for each
    credit its consumer gives, ``credit`` at first, then one from ``{queue}-credits`` for each
    batch it takes. The last record says how it ended: ``(END, None)``, ``(DIED, (pid, exit
    status))`` or ``(CANCELLED, None)``. Each record is a pickle."""
    import distributed

    queue_class: Any = distributed.Queue  # (typed loosely: Dask is optional)
    items, credits = queue_class(f"{queue}-items"), queue_class(f"{queue}-credits")
    try:
        child = _take_child(call_id)
        if child is None:
            end: tuple[int, Any] = CANCELLED, None
        else:
            message = (sys_path, with_pickle_buffers(payload), batch)
            end = _give_back(call_id, child, _forward(child, message, items, credits, credit))
        items.put(pickle.dumps(end))
    finally:
        items.close()
        credits.close()


def _forward(
    child: _Child, message: Any, items: Any, credits: Any, credit: int
) -> tuple[int, Any] | None:
    """Start the stream ``message`` in ``child`` and put its batches into ``items`` as
    ``credits`` allow; ``(END, None)`` once it is over, ``None`` if the child died, or was
    killed."""
    try:
        write_frame(child.calls, message)
        while True:
            while not credit:
                try:
                    credits.get(timeout=_CREDIT_WAIT)
                    credit = 1
                except (TimeoutError, asyncio.TimeoutError):
                    pass
                if child.killed:
                    return None
            credit -= 1
            write_frame(child.calls, MORE)
            frame = read_raw_frame(child.outcomes)
            if not frame:
                return END, None
            items.put(frame)
    except (EOFError, OSError):
        return None


def _take_child(call_id: str) -> _Child | None:
    """An idle child (or a new one) to run the call ``call_id``, counted running it; ``None``
    if :func:`kill_call` named the call already."""
    with _lock:
        if _cancelled.pop(call_id, None) is not None:
            return None
        child = _idle.pop() if _idle else None
    if child is None:
        child = _Child()  # (outside the lock: it takes a while)
    with _lock:
        if _cancelled.pop(call_id, None) is not None:
            _idle.append(child)
            return None
        _running[call_id] = child
    return child


def _give_back(call_id: str, child: _Child, outcome: tuple[int, Any] | None) -> tuple[int, Any]:
    """The call's outcome, and ``child`` idle again; or, where the child died (``outcome``
    is ``None``) or was killed, the child reaped and the outcome ``DIED`` or ``CANCELLED``."""
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
