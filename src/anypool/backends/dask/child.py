"""The process a Dask worker runs a pool's calls in, one at a time: killing it stops the call it
runs, which Dask cannot do to a task (dask/distributed#4694).

Started by :mod:`.remote` with ``python -c``; reads pickled calls from one pipe and writes
their outcomes to another (a frame each: an 8-byte length, then a pickle), so that what the
call prints to stdout stays the Dask worker's output. Imports neither anyio nor Dask.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
from typing import Any, BinaryIO

from ..._serialize import with_pickle_buffers
from .._execution import run_pickled_call, use_paths

__all__ = ["main", "read_frame", "write_frame"]

_LENGTH = struct.Struct("!Q")


def main(calls_fd: int, outcomes_fd: int) -> None:
    """Run the calls that come in on ``calls_fd`` until it closes: ``(sys_path, payload)``
    each, answered ``(kind, body)`` on ``outcomes_fd``."""
    # A Ctrl-C at the terminal signals the whole process group: it is for the caller, which
    # cancels what it wants cancelled (as a local pool's workers do).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with os.fdopen(calls_fd, "rb") as calls, os.fdopen(outcomes_fd, "wb") as outcomes:
        while True:
            try:
                sys_path, payload = read_frame(calls)
            except EOFError:
                return
            use_paths(sys_path)
            kind, body = run_pickled_call(payload)
            write_frame(outcomes, (kind, with_pickle_buffers(body)))


def read_frame(pipe: BinaryIO) -> Any:
    """The next object written with :func:`write_frame`; ``EOFError`` once the pipe closes."""
    header = pipe.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError
    (length,) = _LENGTH.unpack(header)
    data = pipe.read(length)
    if len(data) < length:
        raise EOFError
    return pickle.loads(data)


def write_frame(pipe: BinaryIO, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_LENGTH.pack(len(data)))
    pipe.write(data)
    pipe.flush()
