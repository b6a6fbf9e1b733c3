"""The messages that cross a worker's pipe, and how they are framed.

Every message is one frame: a fixed header (the message kind, the payload's length) followed by
the payload. The length is 64 bits, so a frame of any size is one message, and a reader always
knows how many bytes to wait for.

Parent to worker:
    CALL        a pickled tuple ``(fn, args, kwargs, event_loop)``; ``event_loop`` says where a
                coroutine returned by ``fn`` runs: ``"asyncio"`` or ``"trio"``, as the caller.
    STREAM      a pickled tuple ``(fn, args, kwargs, event_loop, buffer)``: run the generator
                ``fn(*args, **kwargs)`` and send its items, at most ``buffer`` ahead of CREDIT.
    CREDIT      a COUNT: the parent took that many more items of the stream.
    CLOSE       empty: close the stream's generator (GeneratorExit) and finish with RESULT;
                for a channel: the parent takes nothing more (and sends nothing more).
    OPEN        a pickled tuple ``(fn, args, kwargs, event_loop, buffer)``: call
                ``fn(channel_end, *args, **kwargs)``; then ITEM and CREDIT flow both ways.
    EOF         empty: the parent sends no more ITEMs on the channel.
    QUEUE_REPLY a REPLY status, then what a queue request returns (a pickled item for a get).
Worker to parent:
    RESULT      the pickled return value of a call; ends a stream or a channel too.
    ITEM        one pickled item of a stream, or of a channel (both ways).
    CREDIT      (channel) the worker took that many more items; the first one says it started.
    QUEUE_PUT   a QUEUE_REQUEST, then a pickled item: put it in a queue of the parent.
    QUEUE_GET   a QUEUE_REQUEST: take an item from a queue of the parent.
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
    "CLOSE",
    "COUNT",
    "CREDIT",
    "EOF",
    "ERROR",
    "HEADER",
    "INIT_FAILED",
    "ITEM",
    "OPEN",
    "QUEUE_GET",
    "QUEUE_PUT",
    "QUEUE_REPLY",
    "QUEUE_REQUEST",
    "REPLY",
    "RESULT",
    "RETIRING",
    "STREAM",
    "ErrorReport",
    "FrameReader",
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
STREAM: Final = 6
CREDIT: Final = 7
CLOSE: Final = 8
ITEM: Final = 9
OPEN: Final = 10
EOF: Final = 11
QUEUE_PUT: Final = 12
QUEUE_GET: Final = 13
QUEUE_REPLY: Final = 14

COUNT: Final = struct.Struct("<Q")

QUEUE_REQUEST: Final = struct.Struct("<Q?d")
"""A queue request: the queue's id, whether to wait, and for how long at most (``-1.0``: no
limit). A put's pickled item follows."""

REPLY: Final = struct.Struct("<B")
"""The status of a queue request, one of the ``REPLY_*`` values; a get's item follows ``OK``."""
REPLY_OK: Final = 0
REPLY_FULL: Final = 1
REPLY_EMPTY: Final = 2
REPLY_CLOSED: Final = 3
REPLY_GONE: Final = 4


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


class FrameReader:
    """Reassembles frames from the bytes read from a pipe, whichever way they are read.

    The owner reads into :meth:`free_space`, reports the count to :meth:`advance`, and takes
    frames from :meth:`next_frame`. Reads go into one reusable buffer (allocating a fresh
    buffer per read is what makes naive readers slow); a frame too large for it gets a buffer
    of its own, read into directly, so a large payload is never copied on its way in.
    """

    __slots__ = ("_buffer", "_end", "_large", "_large_filled", "_large_kind", "_start", "_view")

    def __init__(self, size: int = 256 * 1024) -> None:
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        self._large: bytearray | None = None
        self._large_kind = 0
        self._large_filled = 0

    def next_frame(self) -> tuple[int, bytes | bytearray] | None:
        """The next complete frame (kind, payload), or ``None`` until more bytes are read."""
        if self._large is not None:
            if self._large_filled < len(self._large):
                return None
            frame, self._large = (self._large_kind, self._large), None
            return frame
        available = self._end - self._start
        if available < HEADER.size:
            return None
        kind, size = HEADER.unpack_from(self._buffer, self._start)
        begin = self._start + HEADER.size
        if available - HEADER.size >= size:
            payload = bytes(self._view[begin : begin + size])
            self._start = begin + size
            if self._start == self._end:
                self._start = self._end = 0
            return kind, payload
        if HEADER.size + size > len(self._buffer):
            # Move what arrived of the payload into a buffer of its own and read the rest there.
            self._large = bytearray(size)
            self._large_kind = kind
            self._large_filled = self._end - begin
            self._large[: self._large_filled] = self._view[begin : self._end]
            self._start = self._end = 0
        return None

    @property
    def partial(self) -> bool:
        """Whether part of a frame has been read."""
        return self._end > self._start or self._large is not None

    def free_space(self) -> memoryview:
        """Where the next read must go."""
        if self._large is not None:
            return memoryview(self._large)[self._large_filled :]
        if self._end == len(self._buffer):
            # Full with the start of a frame that fits: move it to the front.
            remaining = self._end - self._start
            self._buffer[:remaining] = self._view[self._start : self._end]
            self._start, self._end = 0, remaining
        return self._view[self._end :]

    def advance(self, count: int) -> None:
        """Record that ``count`` bytes were read into :meth:`free_space`."""
        if self._large is not None:
            self._large_filled += count
        else:
            self._end += count


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
