"""Framed messages over the parent's end of a worker's pipe, awaited from any event loop.

The descriptor is non-blocking and waited on with ``anyio.wait_readable`` / ``wait_writable``:
no thread and no polling, so a message is seen the moment the worker writes it.
"""

from __future__ import annotations

import os
import select

import anyio

from ._protocol import FrameReader, encode_frame, unsent

__all__ = ["ChannelClosed", "MessageChannel"]


class ChannelClosed(Exception):
    """The other end closed the pipe (the worker exited), or this end was closed."""


class MessageChannel:
    """Send and receive frames over one non-blocking pipe descriptor.

    One task at a time may send and one may receive; the pool guarantees that by giving a worker
    to exactly one call at a time.
    """

    __slots__ = ("_fd", "_poller", "_reader")

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._reader = FrameReader()
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

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
                sent += (
                    os.write(self._fd, unsent(parts, sent)) if sent else os.writev(self._fd, parts)
                )
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError, OSError) as error:
                raise ChannelClosed from error
            if sent >= total:
                return
            await anyio.wait_writable(self._fd)

    async def receive(self) -> tuple[int, bytes | bytearray]:
        """Wait for the next frame: its kind and its payload.

        Raises:
            ChannelClosed: the worker's end was closed (the worker exited) first.
        """
        reader = self._reader
        while (frame := reader.next_frame()) is None:
            # Wait before reading: a frame we still lack has rarely arrived already, and an
            # empty read costs a syscall and an exception.
            await anyio.wait_readable(self._fd)
            self._read()
        return frame

    def receive_nowait(self) -> tuple[int, bytes | bytearray] | None:
        """A frame that has already arrived in full, else ``None``.

        Raises:
            ChannelClosed: the worker's end was closed.
        """
        frame = self._reader.next_frame()
        # poll() first: it costs a third of a read that fails with EAGAIN.
        if frame is None and (self._fd < 0 or self._poller.poll(0)):
            self._read()
            frame = self._reader.next_frame()
        return frame

    def _read(self) -> None:
        """Read what has arrived, if anything."""
        if self._fd < 0:
            raise ChannelClosed
        try:
            count = os.readv(self._fd, [self._reader.free_space()])
        except BlockingIOError:
            return
        except (ConnectionResetError, OSError) as error:
            raise ChannelClosed from error
        if count == 0:
            raise ChannelClosed
        self._reader.advance(count)
