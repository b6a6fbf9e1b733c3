"""Framed messages over the parent's end of a worker's pipe, awaited from any event loop.

The descriptor is non-blocking and waited on with ``anyio.wait_readable`` / ``wait_writable``:
no thread and no polling, so a message is seen the moment the worker writes it.
"""

from __future__ import annotations

import os
from typing import Final

import anyio

from ._protocol import HEADER, encode_frame, unsent

__all__ = ["ChannelClosed", "MessageChannel"]

_READ_SIZE: Final = 256 * 1024


class ChannelClosed(Exception):
    """The other end closed the pipe (the worker exited), or this end was closed."""


class MessageChannel:
    """Send and receive frames over one non-blocking pipe descriptor.

    One task at a time may send and one may receive; the pool guarantees that by giving a worker
    to exactly one call at a time.
    """

    __slots__ = ("_buffer", "_fd")

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._buffer = bytearray()

    @property
    def fileno(self) -> int:
        """The descriptor, or -1 once closed."""
        return self._fd

    def close(self) -> None:
        """Close this end; the worker sees end-of-file. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    async def send(self, kind: int, payload: bytes) -> None:
        """Send one frame. If this is cancelled part-way, the channel is unusable.

        Raises:
            ChannelClosed: the worker's end is gone.
        """
        parts, total = encode_frame(kind, payload)
        sent = 0
        while True:
            try:
                # Usually one syscall writes the whole frame and we never wait.
                sent += os.write(self._fd, unsent(parts, sent)) if sent else os.writev(self._fd, parts)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError) as error:
                raise ChannelClosed from error
            if sent >= total:
                return
            await anyio.wait_writable(self._fd)

    async def receive(self) -> tuple[int, bytes | bytearray]:
        """Wait for the next frame: its kind and its payload.

        Raises:
            ChannelClosed: the worker's end was closed (the worker exited) first.
        """
        header = await self._receive_exactly(HEADER.size)
        kind, size = HEADER.unpack(header)
        return kind, await self._receive_exactly(size)

    def receive_nowait(self) -> tuple[int, bytes | bytearray] | None:
        """A frame that has already fully arrived, else ``None``.

        Raises:
            ChannelClosed: the worker's end was closed.
        """
        try:
            self._fill()
        except BlockingIOError:
            pass
        if len(self._buffer) < HEADER.size:
            return None
        kind, size = HEADER.unpack_from(self._buffer)
        if len(self._buffer) < HEADER.size + size:
            return None
        payload = bytes(self._buffer[HEADER.size : HEADER.size + size])
        del self._buffer[: HEADER.size + size]
        return kind, payload

    async def _receive_exactly(self, size: int) -> bytes | bytearray:
        buffer = self._buffer
        if len(buffer) < size and size > _READ_SIZE:
            return await self._receive_large(size)
        while len(buffer) < size:
            # Wait before reading: a frame we still lack has rarely arrived already, and an
            # empty read would cost a syscall and an exception.
            await anyio.wait_readable(self._fd)
            try:
                self._fill()
            except BlockingIOError:
                continue
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    async def _receive_large(self, size: int) -> bytearray:
        # Read straight into the payload's own buffer: no intermediate copies of a large message.
        payload = bytearray(size)
        view = memoryview(payload)
        filled = len(self._buffer)
        view[:filled] = self._buffer
        self._buffer.clear()
        while filled < size:
            try:
                count = os.readv(self._fd, [view[filled:]])
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            except ConnectionResetError as error:
                raise ChannelClosed from error
            if count == 0:
                raise ChannelClosed
            filled += count
        return payload

    def _fill(self) -> None:
        if self._fd < 0:
            raise ChannelClosed
        try:
            chunk = os.read(self._fd, _READ_SIZE)
        except ConnectionResetError as error:
            raise ChannelClosed from error
        if not chunk:
            raise ChannelClosed
        self._buffer += chunk

