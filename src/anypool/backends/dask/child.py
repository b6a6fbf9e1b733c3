"""The process a Dask worker runs a pool's calls in, one at a time: killing it stops the call it
runs, which Dask cannot do to a task (dask/distributed#4694).

Started by :mod:`.remote` with ``python -c``; reads pickled calls from one pipe and writes
their outcomes to another (a frame each: an 8-byte length, then a pickle), so that what the
call prints to stdout stays the Dask worker's output. Imports neither anyio nor Dask.

A stream's generator sends a batch of its items for each ``MORE`` frame it is sent (the
consumer's credit: it runs only so far ahead), and an empty frame once it is over.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
from typing import Any, BinaryIO

from ..._serialize import Payload, with_pickle_buffers
from .._batches import run_stream
from .._execution import run_pickled_call, use_paths

__all__ = ["MORE", "main", "read_frame", "read_raw_frame", "write_frame"]

_LENGTH = struct.Struct("!Q")

MORE = None
"""What asks a stream's generator for its next batch."""


def main(calls_fd: int, outcomes_fd: int) -> None:
    """Run the calls that come in on ``calls_fd`` until it closes: ``(sys_path, payload,
    None)`` each, answered ``(kind, body)`` on ``outcomes_fd``; or a stream, ``(sys_path,
    payload, batch)``, answered a batch for each ``MORE``, then an empty frame."""
    # A Ctrl-C at the terminal signals the whole process group: it is for the caller, which
    # cancels what it wants cancelled (as a local pool's workers do).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with os.fdopen(calls_fd, "rb") as calls, os.fdopen(outcomes_fd, "wb") as outcomes:
        while True:
            try:
                sys_path, payload, batch = read_frame(calls)
                use_paths(sys_path)
                if batch is None:
                    _send(outcomes, run_pickled_call(payload))
                    continue
                batches = run_stream(payload, batch)
                while True:
                    read_frame(calls)  # MORE: the consumer has room for a batch
                    outcome = next(batches, None)
                    if outcome is None:
                        _write_raw_frame(outcomes, b"")
                        break
                    _send(outcomes, outcome)
            except EOFError:
                return


def read_frame(pipe: BinaryIO) -> Any:
    """The next object written with :func:`write_frame`; ``EOFError`` once the pipe closes."""
    return pickle.loads(read_raw_frame(pipe))


def read_raw_frame(pipe: BinaryIO) -> bytes:
    """The next frame's pickle, unread; ``EOFError`` once the pipe closes."""
    header = pipe.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError
    (length,) = _LENGTH.unpack(header)
    data = pipe.read(length)
    if len(data) < length:
        raise EOFError
    return data


def write_frame(pipe: BinaryIO, value: Any) -> None:
    _write_raw_frame(pipe, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _send(pipe: BinaryIO, outcome: tuple[int, Payload]) -> None:
    """An outcome, its large buffers pickled in the frame (``with_pickle_buffers``)."""
    kind, body = outcome
    write_frame(pipe, (kind, with_pickle_buffers(body)))


def _write_raw_frame(pipe: BinaryIO, data: bytes) -> None:
    pipe.write(_LENGTH.pack(len(data)))
    pipe.write(data)
    pipe.flush()
