"""Framed messages over the parent's end of a worker's pipe, awaited from any event loop.

The descriptor is non-blocking and waited on by the event loop itself: no thread and no polling,
so a message is seen the moment the worker writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import sys
from typing import Any

import anyio

from ..._eventloop import Wakeup, spawn_detached
from ..._serialize import Payload
from .framing import FrameReader, close_all, encode_frame, receive_into, send_frame, unsent

__all__ = ["ChannelClosed", "MessageChannel"]

# What poll() reports once the worker's end is gone: closed, or reset because the worker exited
# with a message of ours unread.
_PEER_GONE = select.POLLHUP | select.POLLERR


class ChannelClosed(Exception):
    """The other end closed the pipe (the worker exited), or this end was closed."""


class MessageChannel:
    """Send and receive frames over one non-blocking pipe descriptor.

    One task at a time may receive (the pool gives a worker to one call at a time); sends from
    several tasks are written one frame after the other.
    """

    __slots__ = (
        "__weakref__",
        "_fd",
        "_poller",
        "_read_first",
        "_reader",
        "_selector_loop",
        "_sending",
        "_socket",
        "_stale_possible",
        "_waiter",
        "_watched_by",
        "_writing",
        "cut_short",
    )

    def __init__(self, fd: int) -> None:
        """Take ``fd``, one end of a socket pair; the channel closes it."""
        # A socket object for sendmsg/recvmsg, which carry shared memory's descriptors.
        self._socket = socket.socket(fileno=fd)
        self._socket.setblocking(False)
        self._fd = fd
        self._reader = FrameReader()
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        # asyncio only: the loop our descriptor is registered with, and the future to wake.
        self._watched_by: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        # Whether that loop is one of the standard library's (see _watch), and whether a task
        # has read since it last called us.
        self._selector_loop = False
        self._stale_possible = False
        # Whether to read what arrived before waking the waiter (see set_when_more_arrives).
        self._read_first = False
        # Set while a frame waits to be written in full: other frames wait for it.
        self._sending: anyio.Event | None = None
        # The scope of the wait to write the rest of that frame.
        self._writing: anyio.CancelScope | None = None
        self.cut_short = False
        """Whether a send was cancelled part-way through a frame."""

    @property
    def fileno(self) -> int:
        """The descriptor, or -1 once closed."""
        return self._fd

    def close(self) -> None:
        """Close this end; the worker sees end-of-file. Idempotent."""
        if self._fd >= 0:
            self._unwatch()
            if self._writing is not None:
                # A task waits to write the rest of a frame (shielded, it may be: see send).
                # Closed under it, the descriptor would leave the event loop's set without a
                # word, and the task would wait for ever: it stops now, while it is open.
                self._writing.cancel()
                loop = asyncio._get_running_loop()
                if loop is not None:
                    loop.remove_writer(self._fd)
            self._fd = -1
            self._socket.close()
            self._reader.close()

    def forget_after_fork(self) -> None:
        """In a process forked from this one: close this end without touching the event loop,
        which belongs to the parent."""
        if self._fd >= 0:
            self._fd = -1
            os.close(self._socket.detach())
            self._reader.close()

    async def send(self, kind: int, payload: Payload, *, whole: bool = False) -> None:
        """Send one frame. Frames sent by concurrent tasks go one after the other. With
        ``whole``, a cancellation stops the send only before its first byte: once begun, the
        frame is written in full.

        Raises:
            ChannelClosed: the worker's end is gone, or an earlier send was cancelled part-way
                through its frame (what follows could not be read as frames any more).
        """
        while self._sending is not None:
            await self._sending.wait()
        if self.cut_short:
            raise ChannelClosed
        parts, total, fds = encode_frame(kind, payload)
        try:
            # Usually one syscall writes the whole frame and we never wait.
            sent = self._write(parts, 0, fds)
            if sent < total:
                self._sending = anyio.Event()
                await self._write_rest(parts, sent, total, fds, whole=whole)
        finally:
            # Sent with the first byte (the worker holds them now), or not sent at all.
            close_all(fds)

    def send_nowait(self, kind: int, payload: bytes) -> bool:
        """Send one frame without waiting, if the pipe takes its first byte now; ``False``
        if it took nothing (the frame was not sent). The rest of a frame begun, a task of its
        own writes in full before any later frame. If the worker's end is gone, the frame is
        lost, as the reader of the pipe finds out."""
        if self._sending is not None or self.cut_short:
            return False
        parts, total, _ = encode_frame(kind, payload)
        try:
            sent = self._write(parts, 0, [])
        except ChannelClosed:
            return True
        if sent == 0 or sent == total:
            return sent == total
        # Claimed now, before the task runs: a later frame waits for this one.
        self._sending = anyio.Event()

        async def write_the_rest() -> None:
            # Nobody awaits this task. If the pipe closes or the event loop ends first, what
            # follows cannot be sent (cut_short), and the reader of the pipe finds out.
            with contextlib.suppress(BaseException):
                await self._write_rest(parts, sent, total, [], whole=True)

        spawn_detached(write_the_rest)
        return True

    async def _write_rest(
        self, parts: list[bytes], sent: int, total: int, fds: list[int], *, whole: bool
    ) -> None:
        """Write the frame ``parts`` past ``sent``, once ``_sending`` is claimed for it
        (released here); with ``whole``, shielded from cancellation once begun."""
        sending = self._sending
        assert sending is not None
        try:
            with anyio.CancelScope() as self._writing:
                while sent < total:
                    self._writing.shield = whole and sent > 0
                    await anyio.wait_writable(self._fd)
                    sent += self._write(parts, sent, fds)
        except BaseException:
            # What follows could not be read as frames any more.
            self.cut_short = sent > 0
            raise
        finally:
            self._writing = None
            self._sending = None
            sending.set()
        if sent < total:
            # close() stopped the wait.
            self.cut_short = sent > 0
            raise ChannelClosed

    def _write(self, parts: list[bytes], sent: int, fds: list[int]) -> int:
        if self._fd < 0:
            raise ChannelClosed
        try:
            if sent:
                return self._socket.send(unsent(parts, sent))
            return send_frame(self._socket, parts, fds)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError, OSError) as error:
            raise ChannelClosed from error

    async def receive(self) -> tuple[int, Any]:
        """Wait for the next frame: its kind and its payload (see ``FrameReader.next_frame``).

        Raises:
            ChannelClosed: the worker's end was closed (the worker exited) first.
        """
        while (frame := self._next_frame()) is None:
            # Wait before reading: a frame we still lack has rarely arrived already, and an
            # empty read costs a syscall and an exception.
            loop = asyncio._get_running_loop()
            if loop is None:
                # trio's own: anyio's looks the backend up first, on every message.
                await sys.modules["trio"].lowlevel.wait_readable(self._fd)
            else:
                await self._wait_readable_on(loop)
            self._read_in_task()
        return frame

    def set_when_more_arrives(self, wakeup: Wakeup, kind: int) -> None:
        """Set ``wakeup``, for a task that will read a frame of ``kind`` and then wait for the
        next frame. If nothing but that frame has arrived, on asyncio the task is woken only
        once more arrives, and what arrived is read for it: it wakes once, not twice."""
        loop = asyncio._get_running_loop()
        if (
            loop is None
            or self._fd < 0
            or self._waiter is not None
            or not self._reader.holds_at_most(kind)
        ):
            wakeup.set()
            return
        self._watch(loop)
        self._waiter = wakeup.set_asleep()
        self._read_first = True

    async def _wait_readable_on(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watch(loop)
        self._waiter = waiter = loop.create_future()
        self._read_first = False
        try:
            await waiter
        finally:
            self._waiter = None

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        # anyio.wait_readable registers the descriptor with the loop and removes it again on every
        # wait: two epoll_ctl calls and several objects per message. Instead the descriptor stays
        # registered while messages flow, and the reader callback just wakes the waiting task.
        if self._watched_by is not loop:
            self._unwatch()
            loop.add_reader(self._fd, self._on_readable)
            self._watched_by = loop
            # uvloop stops watching a descriptor for good once poll reports an error on it: one
            # last callback, then none, though the frames read on that callback may not include
            # the end-of-file. The standard library's loops keep watching; other loops might not.
            # But they run the callbacks of a select() after the tasks woken before it: a task
            # woken by our callback reads the frame, sends its next call and waits again, and
            # only then does the loop call us for the select() that saw that frame still unread.
            # That call must not wake the new wait for nothing.
            self._selector_loop = isinstance(loop, asyncio.SelectorEventLoop)

    def _on_readable(self) -> None:
        if self._stale_possible:
            self._stale_possible = False
            # Called for what a task has read since, unless more has arrived.
            if not self._poller.poll(0):
                return
        waiter = self._waiter
        if waiter is not None and self._read_first:
            # The task left asleep by set_when_more_arrives, who may be gone (cancelled).
            self._waiter, self._read_first = None, False
            # An end-of-file or a reset is met again by the task's own read.
            with contextlib.suppress(ChannelClosed):
                self._read()
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
            if not self._selector_loop and self._peer_gone():
                # Watch afresh on the next wait, which then hears at once of what is left.
                self._unwatch()
        elif self._poller.poll(0):
            # Readable with nobody waiting: an idle worker retired or died. The loop would call
            # us again on every iteration until someone reads, so stop watching until then.
            # (Without poll() we would also stop on the stale callback that the loop queues
            # when the woken task has not yet read the frame that woke it.)
            self._unwatch()

    def _peer_gone(self) -> bool:
        ready = self._poller.poll(0)
        return bool(ready) and bool(ready[0][1] & _PEER_GONE)

    def _unwatch(self) -> None:
        loop, self._watched_by = self._watched_by, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)

    def receive_nowait(self) -> tuple[int, Any] | None:
        """A frame that has already arrived in full, else ``None``.

        Raises:
            ChannelClosed: the worker's end was closed.
        """
        frame = self._next_frame()
        # poll() first: it costs a third of a read that fails with EAGAIN.
        if frame is None and (self._fd < 0 or self._poller.poll(0)):
            self._read_in_task()
            frame = self._next_frame()
        return frame

    def _next_frame(self) -> tuple[int, Any] | None:
        try:
            return self._reader.next_frame()
        except OSError as error:  # its shared memory is missing or cannot be mapped
            raise ChannelClosed from error

    def _read_in_task(self) -> None:
        """Read what has arrived, from a task (not the loop's callback)."""
        self._stale_possible = self._selector_loop and self._watched_by is not None
        self._read()

    def _read(self) -> None:
        """Read what has arrived, if anything."""
        if self._fd < 0:
            raise ChannelClosed
        try:
            count = receive_into(self._socket, self._reader)
        except BlockingIOError:
            return
        except (ConnectionResetError, OSError) as error:
            raise ChannelClosed from error
        if count == 0:
            raise ChannelClosed
