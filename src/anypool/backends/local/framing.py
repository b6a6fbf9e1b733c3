"""Frames over a worker's pipe: the header, a reader that reassembles frames from what is read,
and the writes and reads that carry shared-memory descriptors with a frame.

Every message is one frame: a fixed header (the message kind, the payload's length) followed by
the payload. The length is 64 bits, so a frame of any size is one message, and a reader always
knows how many bytes to wait for.

Large buffers (a numpy array's data, a bytearray: what pickle protocol 5 lets go out of band)
in a CALL, STREAM or OPEN, a RESULT, or an ITEM (of a stream or a channel, either way) do not
travel through the pipe. Each is copied once into an
anonymous shared-memory file (``memfd_create``) whose descriptor travels with the frame
(``SCM_RIGHTS``); the receiver maps it and unpickles straight from the mapping. Such a frame
has ``OUT_OF_BAND`` set in its kind, and its payload starts with the number of descriptors.
The memory has no name anywhere: the kernel frees it once the last descriptor and mapping are
gone, so it cannot leak, whichever process dies when.

This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections import deque
from collections.abc import Iterable

from ..._serialize import MAX_BUFFERS, OutOfBand, Payload
from .shared_memory import map_shared, share

TYPE_CHECKING = False  # as typing's: workers start without typing (tests/test_architecture.py)
if TYPE_CHECKING:
    from typing import Any, Final

HEADER: Final = struct.Struct("<BQ")

OUT_OF_BAND: Final = 0x80
"""Set in a frame's kind when shared-memory descriptors travel with it."""

# Room for the descriptors of two frames: a read never takes more than one frame's.
_ANCILLARY_SPACE: Final = socket.CMSG_SPACE(2 * MAX_BUFFERS * array.array("i").itemsize)


def encode_frame(kind: int, payload: Payload) -> tuple[list[bytes], int, list[int]]:
    """The buffers that make up one frame, for a gathering write, their total size, and the
    descriptors to send with them (shared memory the caller must close once they are sent)."""
    if not isinstance(payload, OutOfBand):
        return [HEADER.pack(kind, len(payload)), payload], HEADER.size + len(payload), []
    fds: list[int] = []
    try:
        # list.extend keeps the descriptors made before one failed, to close them.
        fds.extend(share(buffer) for buffer in payload.buffers)
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
                maps.append(map_shared(fds.popleft()))
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
