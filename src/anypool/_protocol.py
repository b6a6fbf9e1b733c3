"""The messages that cross a worker's pipe, and how they are framed.

Every message is one frame: a fixed header (the message kind, the payload's length) followed by
the payload. The length is 64 bits, so a frame of any size is one message, and a reader always
knows how many bytes to wait for.

Parent to worker:
    CALL        a pickled :class:`Call`.
Worker to parent:
    RESULT      the pickled return value of a call.
    ERROR       a pickled :class:`ErrorReport`: the call raised.
    INIT_FAILED a pickled :class:`ErrorReport`: the pool's initializer raised; the worker exits.
    RETIRING    empty: the worker was idle for ``idle_timeout`` and exits without reading
                anything more, so a CALL the parent sent meanwhile was never started.

This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import struct
from typing import Any, Final, NamedTuple

__all__ = [
    "CALL",
    "ERROR",
    "HEADER",
    "INIT_FAILED",
    "RESULT",
    "RETIRING",
    "Call",
    "ErrorReport",
    "WorkerConfig",
    "encode_frame",
    "unsent",
]

HEADER: Final = struct.Struct("<BQ")

CALL: Final = 1
RESULT: Final = 2
ERROR: Final = 3
INIT_FAILED: Final = 4
RETIRING: Final = 5


def encode_frame(kind: int, payload: bytes) -> tuple[list[bytes], int]:
    """The buffers that make up one frame, for a gathering write, and their total size."""
    return [HEADER.pack(kind, len(payload)), payload], HEADER.size + len(payload)


def unsent(parts: list[bytes], offset: int) -> memoryview:
    """What remains of ``parts`` after a partial write of ``offset`` bytes."""
    for part in parts:
        if offset < len(part):
            return memoryview(part)[offset:]
        offset -= len(part)
    return memoryview(b"")


class Call(NamedTuple):
    """One function call for a worker to run."""

    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    event_loop: str
    """Where a coroutine returned by ``fn`` runs: ``"asyncio"`` or ``"trio"``, as the caller."""


class ErrorReport(NamedTuple):
    """An exception raised in a worker, in a form that always reaches the parent.

    ``exception`` holds the pickled exception when it survived a pickle round trip in the worker,
    else ``None``; the names and the traceback text always arrive, so the parent can fall back to
    a ``RemoteError`` when the exception itself cannot be rebuilt.
    """

    exception: bytes | None
    type_name: str
    message: str
    traceback: str


class WorkerConfig(NamedTuple):
    """What a worker needs to know at start."""

    initializer: Any
    initargs: tuple[Any, ...]
    idle_timeout: float | None
