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
    QUEUED      a COUNT, the call's number (counted per worker), then a CALL's payload: a
                call sent while the worker runs another. The worker announces it (STARTED)
                before it starts it, unless a DROP for it has arrived by then (SKIPPED).
    DROP        a COUNT: do not start the QUEUED call of that number; too late once started.
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
    STARTED     a COUNT: the worker starts the QUEUED call of that number. It comes after
                the outcome of the call before, often in the same write.
    SKIPPED     a COUNT: the worker did not start that QUEUED call, as a DROP asked.

Large buffers (a numpy array's data, a bytearray: what pickle protocol 5 lets go out of band)
in a CALL, STREAM or OPEN, a RESULT, or an ITEM (of a stream or a channel, either way) do not
travel through the pipe. Each is copied once into an
anonymous shared-memory file (``memfd_create``) whose descriptor travels with the frame
(``SCM_RIGHTS``); the receiver maps it and unpickles straight from the mapping. Such a frame
has ``OUT_OF_BAND`` set in its kind, and its payload starts with the number of descriptors.
The memory has no name anywhere: the kernel frees it once the last descriptor and mapping are
gone, so it cannot leak, whichever process dies when.

A file the receiver no longer maps is its own: nobody else holds it (the sender writes it with
write(), never maps it, and closes it once sent). A process that keeps spare files (a worker,
or a parent with a pool open) writes the next large buffer it sends into one of those instead
of a fresh file, whose every page the kernel would allocate and zero (and free again later):
about half of what a large transfer costs. At most ``_SPARES`` files of up to
``_SPARE_MAX_SIZE`` bytes are kept.

This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import struct
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

__all__ = [
    "CALL",
    "CLOSE",
    "COUNT",
    "CREDIT",
    "DROP",
    "EOF",
    "ERROR",
    "HEADER",
    "INIT_FAILED",
    "ITEM",
    "OPEN",
    "OUT_OF_BAND",
    "PRELOAD_VARIABLE",
    "QUEUED",
    "QUEUE_GET",
    "QUEUE_PUT",
    "QUEUE_REPLY",
    "QUEUE_REQUEST",
    "REPLY",
    "RESULT",
    "RETIRING",
    "SKIPPED",
    "STARTED",
    "STREAM",
    "ErrorReport",
    "FrameReader",
    "OutOfBand",
    "WorkerConfig",
    "close_all",
    "encode_frame",
    "keep_spare_files",
    "receive_into",
    "send_frame",
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
QUEUED: Final = 15
DROP: Final = 16
STARTED: Final = 17
SKIPPED: Final = 18

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


OUT_OF_BAND: Final = 0x80
"""Set in a frame's kind when shared-memory descriptors travel with it."""

OUT_OF_BAND_MIN: Final = 512 * 1024
"""Buffers of at least this many bytes go through shared memory: below it, the pipe is faster."""
MAX_BUFFERS: Final = 64
"""The most shared-memory descriptors one frame carries; further buffers go in band."""

# Room for the descriptors of two frames: a read never takes more than one frame's.
_ANCILLARY_SPACE: Final = socket.CMSG_SPACE(2 * MAX_BUFFERS * array.array("i").itemsize)


class OutOfBand:
    """A pickle whose large buffers travel apart from it.

    On the way out, ``buffers`` are views of the pickled objects' memory; on the way in, the
    shared-memory mappings that hold it, which the unpickled objects then use as their own.
    """

    __slots__ = ("buffers", "data")

    def __init__(self, data: bytes, buffers: list[Any]) -> None:
        self.data = data
        self.buffers = buffers

    def __len__(self) -> int:
        return len(self.data) + sum(memoryview(buffer).nbytes for buffer in self.buffers)


Payload = bytes | OutOfBand


def encode_frame(kind: int, payload: Payload) -> tuple[list[bytes], int, list[int]]:
    """The buffers that make up one frame, for a gathering write, their total size, and the
    descriptors to send with them (shared memory the caller must close once they are sent)."""
    if not isinstance(payload, OutOfBand):
        return [HEADER.pack(kind, len(payload)), payload], HEADER.size + len(payload), []
    fds: list[int] = []
    try:
        # list.extend keeps the descriptors made before one failed, to close them.
        fds.extend(_share(buffer) for buffer in payload.buffers)
    except BaseException:
        close_all(fds)
        raise
    count = bytes((len(fds),))
    size = len(count) + len(payload.data)
    parts = [HEADER.pack(kind | OUT_OF_BAND, size), count, payload.data]
    return parts, HEADER.size + size, fds


def close_all(fds: Iterable[int]) -> None:
    """Close the descriptors of a frame once they are sent (the receiver holds its own copies),
    or when it will not be sent."""
    for fd in fds:
        os.close(fd)


def _share(buffer: Any) -> int:
    """A shared-memory file holding a copy of ``buffer``, for this process to send."""
    view = memoryview(buffer).cast("B")
    fd = _take_spare()
    try:
        if fd < 0:
            fd = os.memfd_create("anypool", os.MFD_CLOEXEC)
            # Only this user's processes may open it through /proc.
            os.fchmod(fd, 0o600)
        else:
            # The receiver maps the file whole: cut or grow it to this buffer's size (the
            # writes below then cover every byte of it).
            os.ftruncate(fd, view.nbytes)
        written = 0
        while written < view.nbytes:
            written += os.pwrite(fd, view[written:], written)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


# Spare shared-memory files (descriptors), newest last. Appended to by finalizers, which run
# whenever a mapping is collected, in any thread: only deque's atomic operations touch it.
_spares: deque[int] = deque()
_SPARES: Final = 2
_SPARE_MAX_SIZE: Final = 64 * 1024 * 1024
_keepers = 0
"""How many reasons this process has to keep spare files (open pools; 1 in a worker)."""


def keep_spare_files(keep: bool) -> None:
    """Count one more (or one fewer) reason to keep spare files; with none left, close them."""
    global _keepers
    _keepers += 1 if keep else -1
    if _keepers == 0:
        _drop_spares(0)


def _take_spare() -> int:
    try:
        return _spares.pop()
    except IndexError:
        return -1


def _recycle(fd: int, size: int, owner: int) -> None:
    """A mapping of the file ``fd`` was collected: keep the file as a spare, or close it."""
    if _keepers > 0 and owner == os.getpid() and size <= _SPARE_MAX_SIZE:
        _spares.append(fd)
        _drop_spares(_SPARES)
    else:
        # A mapping inherited through fork() is no sign that its file is free: the process it
        # came from may still map it.
        os.close(fd)


def _drop_spares(keep: int) -> None:
    while len(_spares) > keep:
        try:
            fd = _spares.popleft()
        except IndexError:  # taken meanwhile by another thread
            return
        os.close(fd)


def _forget_spares_after_fork() -> None:
    # Both are the parent's: its spare files, which it may be writing again, and its pools.
    global _keepers
    _keepers = 0
    _drop_spares(0)


os.register_at_fork(after_in_child=_forget_spares_after_fork)


def send_frame(sock: socket.socket, parts: list[bytes], fds: list[int], flags: int = 0) -> int:
    """Write what the socket takes of a whole frame, its descriptors with its first byte."""
    if not fds:
        # writev costs less than sendmsg, and the flags of a plain write are the socket's own.
        return os.writev(sock.fileno(), parts) if not flags else sock.sendmsg(parts, (), flags)
    rights = array.array("i", fds)
    return sock.sendmsg(parts, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], flags)


def receive_into(sock: socket.socket, reader: FrameReader, flags: int = 0) -> int:
    """Read what has arrived into ``reader``, the descriptors that came with it included;
    the count of bytes read (0 at end-of-file)."""
    count, ancillary, _, _ = sock.recvmsg_into([reader.free_space()], _ANCILLARY_SPACE, flags)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            reader.fds.extend(fds)
    reader.advance(count)
    return count


def _map(fd: int) -> mmap.mmap:
    """Map a shared-memory file received; its descriptor is closed or kept as a spare once
    the mapping is collected."""
    try:
        size = os.fstat(fd).st_size
        # MAP_POPULATE: one system call maps every page, instead of a fault per page later.
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapping = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    weakref.finalize(mapping, _recycle, fd, size, os.getpid()).atexit = False
    return mapping


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

    __slots__ = (
        "_buffer",
        "_end",
        "_large",
        "_large_filled",
        "_large_kind",
        "_start",
        "_view",
        "fds",
    )

    def __init__(self, size: int = 256 * 1024) -> None:
        self.fds: deque[int] = deque()
        """Descriptors received and not yet claimed by their frame (see :func:`receive_into`)."""
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        self._large: bytearray | None = None
        self._large_kind = 0
        self._large_filled = 0

    def next_frame(self) -> tuple[int, Any] | None:
        """The next complete frame (kind, payload), or ``None`` until more bytes are read.
        The payload is ``bytes`` or a ``bytearray``, or an :class:`OutOfBand` of mappings.

        Raises:
            BrokenPipeError: the shared memory of an out-of-band frame did not arrive.
        """
        frame = self._next_frame()
        if frame is not None and frame[0] & OUT_OF_BAND:
            return self._claim_buffers(*frame)
        return frame

    def _claim_buffers(self, kind: int, payload: bytes | bytearray) -> tuple[int, OutOfBand]:
        count = payload[0]
        if len(self.fds) < count:
            raise BrokenPipeError("the shared memory of a message did not arrive")
        fds = deque(self.fds.popleft() for _ in range(count))
        maps = []
        try:
            while fds:
                maps.append(_map(fds.popleft()))
        except BaseException:
            close_all(fds)  # those not mapped yet (a mapping closes its own)
            raise
        return kind & ~OUT_OF_BAND, OutOfBand(bytes(payload[1:]), maps)

    def close(self) -> None:
        """Close the descriptors received that no frame claimed."""
        close_all(self.fds)
        self.fds.clear()

    def _next_frame(self) -> tuple[int, bytes | bytearray] | None:
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

    def holds_at_most(self, kind: int) -> bool:
        """Whether what has been read and not taken is nothing, or one whole frame of ``kind``."""
        available = self._end - self._start
        if self._large is not None or 0 < available < HEADER.size:
            return False
        if available == 0:
            return True
        frame_kind: int
        size: int
        frame_kind, size = HEADER.unpack_from(self._buffer, self._start)
        return frame_kind == kind and available == HEADER.size + size

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
    cause: bytes | None = None
    """The report of the exception's ``__cause__``, where that is to be rebuilt as well."""


PRELOAD_VARIABLE: Final = "ANYPOOL_FORKSERVER_PRELOAD"
"""The environment variable that names the modules the forkserver preloads for the application
(see ``anypool._child.preload``)."""


class WorkerConfig(NamedTuple):
    """What a worker needs to know at start."""

    initializer: Any
    initargs: tuple[Any, ...]
    idle_timeout: float | None
