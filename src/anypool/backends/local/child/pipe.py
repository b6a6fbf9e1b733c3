"""The worker's end of its pipe to the parent: framed messages, blocking or step by step."""

from __future__ import annotations

import math
import os
import select
import socket
import struct
import threading
import time
from collections import deque

from ...._serialize import Payload
from .. import framing, wire

TYPE_CHECKING = False  # as typing's: workers start without typing (tests/test_architecture.py)
if TYPE_CHECKING:
    from typing import Any

    Frame = tuple[int, Any]
    """A message's kind and payload (see ``FrameReader.next_frame``)."""

__all__ = ["Pipe", "current"]

_current: Pipe | None = None

POLL_SECONDS = 200e-6
"""How long a worker that serves calls back to back polls for the next one before it sleeps.
Waking a sleeping process takes tens of microseconds on some machines (some 45 us on a cloud
VM, measured), more than a parent takes to send its next call once it has a result: polling
saves that much of every round trip. A wait longer than this turns polling off until a call
comes within it again, so that a worker whose calls come seldom sleeps at once."""


def current() -> Pipe:
    """The pipe of this worker process, for the objects a call receives (queues, channels).

    Raises:
        RuntimeError: not called in a worker, or not from the thread that runs the call.
    """
    pipe = _current
    if pipe is None:
        raise RuntimeError("only usable in a call running in an anypool worker")
    if threading.get_ident() != pipe.thread:
        # A reply meant for one thread could otherwise be read by another.
        raise RuntimeError("only usable from the thread that runs the call")
    return pipe


class Pipe:
    """Framed messages over the worker's end of its pipe (a socket pair).

    Frames that arrive while the worker waits for something else (a queue's reply, room to
    write) wait in a backlog, in order, for whoever receives next.
    """

    def __init__(self, fd: int, idle_timeout: float | None) -> None:
        global _current
        self.fd = fd
        self.thread = threading.get_ident()
        self._reader = framing.FrameReader()
        self._backlog: deque[Frame] = deque()
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        # A socket object of our own for flags that os.read/os.write lack (MSG_DONTWAIT).
        self._socket = socket.socket(fileno=os.dup(fd))
        if idle_timeout is not None:
            # A read that waits this long fails with EAGAIN: the idle timeout costs no syscall
            # per call.
            seconds = int(idle_timeout)
            timeval = struct.pack("ll", seconds, int((idle_timeout - seconds) * 1e6))
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        # Whether the last wait for a call ended within POLL_SECONDS.
        self._back_to_back = True
        _current = self

    def receive(self) -> Frame | None:
        """The next message, or ``None`` at end-of-file.

        Raises:
            TimeoutError: no message started to arrive within ``idle_timeout``.
        """
        if self._backlog:
            return self._backlog.popleft()
        return self._read_frame()

    def receive_call(self) -> Frame | None:
        """As :meth:`receive`, waiting for the next call: polled for a moment first while
        calls come back to back (see ``POLL_SECONDS``)."""
        frame = self.take_frame()
        if frame is not None:
            return frame
        started = time.perf_counter()
        if self._back_to_back and not self._reader.partial:
            deadline = started + POLL_SECONDS
            while not self._poller.poll(0) and time.perf_counter() < deadline:
                # Whatever else waits for this CPU (the parent, another worker) goes first.
                os.sched_yield()
        frame = self._read_frame()
        self._back_to_back = time.perf_counter() - started < POLL_SECONDS
        return frame

    def _read_frame(self) -> Frame | None:
        """The next message from the pipe itself (past the backlog), or ``None`` at end-of-file."""
        reader = self._reader
        while (frame := reader.next_frame()) is None:
            try:
                count = framing.receive_into(self._socket, reader)
            except BlockingIOError:
                if reader.partial:
                    continue
                raise TimeoutError from None
            if count == 0:
                return None
        return frame

    def pending(self) -> bool:
        """Whether a message (or end-of-file) is waiting to be received."""
        return bool(self._backlog) or self._reader.partial or bool(self._poller.poll(0))

    def ready(self) -> Frame | None:
        """The next message if it has arrived in full, without waiting; else ``None`` (also
        at end-of-file, which the next :meth:`receive` reports)."""
        frame = self.take_frame()
        if frame is None and self._poller.poll(0) and self.read_available():
            frame = self.take_frame()
        return frame

    def take(self, kind: int) -> list[Any]:
        """The payloads of the messages of ``kind`` that have arrived, taken out of turn;
        without waiting."""
        if self._poller.poll(0):
            self.read_available()
        while (frame := self._reader.next_frame()) is not None:
            self._backlog.append(frame)
        taken = [payload for each, payload in self._backlog if each == kind]
        if taken:
            self._backlog = deque(frame for frame in self._backlog if frame[0] != kind)
        return taken

    def send(self, kind: int, payload: Payload, then: Frame | None = None) -> None:
        """Send one frame, blocking until it is written; and the small frame ``then`` (a kind
        and its bytes) in the same write, if given."""
        parts, total, fds = framing.encode_frame(kind, payload)
        if then is not None:
            parts += (framing.HEADER.pack(then[0], len(then[1])), then[1])
            total += framing.HEADER.size + len(then[1])
        try:
            sent = framing.send_frame(self._socket, parts, fds)
        finally:
            # Sent with the first byte, or not at all.
            framing.close_all(fds)
        while sent < total:
            # A blocking write returns early only when interrupted; resume where it stopped.
            sent += self._socket.send(framing.unsent(parts, sent))

    def request(self, kind: int, payload: bytes) -> bytes | bytearray:
        """Send a request to the parent and wait for its reply (a QUEUE_REPLY payload).

        Raises:
            BrokenPipeError: the parent closed the pipe.
        """
        self.send(kind, payload)
        while True:
            try:
                # The backlog holds older frames, never the reply.
                frame = self._read_frame()
            except TimeoutError:  # the idle timeout; a call waiting for a reply is busy
                continue
            if frame is None:
                raise BrokenPipeError("the pool closed the worker's pipe")
            if frame[0] == wire.QUEUE_REPLY:
                reply: bytes | bytearray = frame[1]  # replies travel in band
                return reply
            self._backlog.append(frame)

    # Without blocking, for loops that wait for the pipe themselves (see _child/duplex.py).

    def take_frame(self) -> Frame | None:
        """A message that has arrived in full, without reading the pipe."""
        if self._backlog:
            return self._backlog.popleft()
        return self._reader.next_frame()

    def read_available(self) -> bool:
        """Read what has arrived without waiting; ``False`` at end-of-file."""
        reader = self._reader
        try:
            count = framing.receive_into(self._socket, reader, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        if count == 0:
            return False
        # Keep the reader's buffer free for what comes next: complete frames wait in the backlog.
        while (frame := reader.next_frame()) is not None:
            self._backlog.append(frame)
        return True

    def write_available(self, parts: list[bytes], offset: int, fds: list[int]) -> int:
        """Write what the pipe takes now of the frame ``parts`` past ``offset`` (its
        descriptors ``fds`` with its first byte); the count written."""
        try:
            if offset:
                return self._socket.send(framing.unsent(parts, offset), socket.MSG_DONTWAIT)
            return framing.send_frame(self._socket, parts, fds, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def wait(self, events: int, timeout: float | None = None) -> None:
        """Block until the pipe is ready for ``events`` (``select.POLLIN`` / ``POLLOUT``), or
        ``timeout`` seconds have passed."""
        poller = select.poll()
        poller.register(self.fd, events)
        poller.poll(None if timeout is None else math.ceil(timeout * 1000))
