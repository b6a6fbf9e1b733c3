"""The worker's end of ``pool.open_channel``: blocking for plain functions, awaitable for
``async def`` ones.

Both ends share one implementation, written as generators that yield what they wait for (the
pipe readable, or readable-or-writable) and leave the waiting to a driver: :class:`ChannelEnd`
blocks in ``poll()``, :class:`AsyncChannelEnd` awaits the event loop the function runs on.

Writes always read too while they wait: the parent may be writing to us at the same moment,
and two processes that both block writing to a full pipe wait for each other forever.
"""

from __future__ import annotations

import select
import time
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, Generic, TypeVar

from ...._serialize import Payload, dumps_item, loads
from .. import framing, wire
from .pipe import Pipe

__all__ = ["AsyncChannelEnd", "ChannelEnd", "ChannelState", "run_async", "run_blocking"]

# What a step waits for; a driver waits, then resumes the step.
_READABLE = select.POLLIN
_READABLE_OR_WRITABLE = select.POLLIN | select.POLLOUT

Steps = Generator[int, None, Any]

# An end's types, from its own side: what it sends, what it receives. The parent's end
# (anypool.Channel) names the same two the other way round.
SendT = TypeVar("SendT", contravariant=True)
ReceiveT = TypeVar("ReceiveT", covariant=True)


class ChannelState:
    """The state of the worker's end of a channel, and its operations as steps."""

    def __init__(self, pipe: Pipe, buffer: int) -> None:
        self.pipe = pipe
        # The parent's items, received ahead of recv(): at most ``buffer`` (its credit).
        self._inbox: deque[bytes | bytearray] = deque()
        self._credit = buffer  # items we may send before the parent takes some
        self._taken = 0  # items recv() returned that the parent was not told of
        self._ack_batch = max(1, buffer // 2)
        self.eof = False  # the parent sends nothing more
        self.closed = False  # the parent takes nothing more either

    def start(self, buffer: int) -> Steps:
        # The first CREDIT tells the parent the channel started: before it, nothing the parent
        # sends can be lost to a worker that retired without reading the OPEN.
        yield from self.write(wire.CREDIT, wire.COUNT.pack(buffer))

    def send(self, item: Any) -> Steps:
        if self.closed:
            raise BrokenPipeError("the parent closed the channel")
        data = dumps_item(item, "sent on the channel", out_of_band=True)
        while self._credit == 0:
            yield from self._handle_next()
            if self.closed:
                raise BrokenPipeError("the parent closed the channel")
        self._credit -= 1
        yield from self.write(wire.ITEM, data)

    def recv(self) -> Steps:
        while not self._inbox:
            if self.eof:
                raise EOFError("the parent closed the channel")
            yield from self._handle_next()
        payload = self._inbox.popleft()
        self._taken += 1
        if self._taken >= self._ack_batch:
            count, self._taken = self._taken, 0
            yield from self.write(wire.CREDIT, wire.COUNT.pack(count))
        return loads(payload)

    def poll(self) -> bool:
        """Whether :meth:`recv` would return at once (an item, or ``EOFError``)."""
        while not (self._inbox or self.eof):
            frame = self.pipe.take_frame()
            if frame is None:
                if not self.pipe.read_available():
                    self._handle(None)
                    continue
                frame = self.pipe.take_frame()
                if frame is None:
                    return False
            self._handle(frame)
        return True

    def write(self, kind: int, payload: Payload) -> Steps:
        parts, total, fds = framing.encode_frame(kind, payload)
        try:
            sent = self.pipe.write_available(parts, 0, fds)
            while sent < total:
                yield _READABLE_OR_WRITABLE
                if not self.pipe.read_available():
                    raise BrokenPipeError("the pool closed the worker's pipe")
                sent += self.pipe.write_available(parts, sent, fds)
        finally:
            # Sent with the first byte (the parent holds them now), or not sent at all.
            framing.close_all(fds)

    def _handle_next(self) -> Steps:
        """Wait for the parent's next message and act on it."""
        while (frame := self.pipe.take_frame()) is None:
            yield _READABLE
            if not self.pipe.read_available():
                break
        self._handle(frame)

    def _handle(self, frame: tuple[int, bytes | bytearray] | None) -> None:
        if frame is None:  # the pool closed the pipe
            self.eof = self.closed = True
            return
        kind, payload = frame
        if kind == wire.ITEM:
            self._inbox.append(payload)
        elif kind == wire.CREDIT:
            self._credit += wire.COUNT.unpack(payload)[0]
        elif kind == wire.EOF:
            self.eof = True
        elif kind == wire.CLOSE:
            self.eof = self.closed = True


def run_blocking(pipe: Pipe, steps: Steps) -> Any:
    """Run ``steps`` to the end, blocking while they wait."""
    try:
        while True:
            pipe.wait(next(steps))
    except StopIteration as stop:
        return stop.value


async def run_async(pipe: Pipe, steps: Steps, event_loop: str) -> Any:
    """Run ``steps`` to the end, awaiting the event loop while they wait."""
    try:
        while True:
            await _wait(pipe.fd, next(steps), event_loop)
    except StopIteration as stop:
        return stop.value


async def _wait(fd: int, events: int, event_loop: str) -> None:
    # Imported here: a worker imports an event loop only when a call needs one.
    if event_loop == "trio":
        import trio

        if events == _READABLE:
            await trio.lowlevel.wait_readable(fd)
            return
        async with trio.open_nursery() as nursery:

            async def wait_then_cancel(wait: Any) -> None:
                await wait(fd)
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait_then_cancel, trio.lowlevel.wait_readable)
            nursery.start_soon(wait_then_cancel, trio.lowlevel.wait_writable)
        return
    import asyncio

    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    if events & select.POLLOUT:
        loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        if events & select.POLLOUT:
            loop.remove_writer(fd)


class ChannelEnd(Generic[SendT, ReceiveT]):
    """The worker's end of a channel opened with ``pool.open_channel``, for plain functions.

    Like one end of :func:`multiprocessing.Pipe`: :meth:`send`, :meth:`recv`, :meth:`poll`, and
    iteration over the items the parent sends. Both directions hold back: ``send`` waits while
    the parent has not taken ``buffer`` earlier items. Use it from the thread that runs the call.

    ``ChannelEnd[SendT, ReceiveT]`` sends ``SendT`` items to the parent and receives
    ``ReceiveT`` items from it; the parent's end is then a ``Channel[ReceiveT, SendT]``: each
    end names what it sends first.

    The methods have :mod:`multiprocessing`'s names (``recv``, not the parent's ``receive``):
    code written for an end of a :func:`multiprocessing.Pipe` runs on this end unchanged, as
    the parent's end keeps the names of the anyio stream it is.
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: ChannelState) -> None:
        self._channel = channel

    def send(self, item: SendT) -> None:
        """Send ``item`` to the parent, waiting while it has ``buffer`` items to take.

        Raises:
            BrokenPipeError: the parent closed the channel.
            SerializationError: ``item`` cannot be pickled.
        """
        run_blocking(self._channel.pipe, self._channel.send(item))

    def recv(self) -> ReceiveT:
        """The next item from the parent, waiting for it.

        Raises:
            EOFError: the parent closed its side (``send_eof()`` or ``aclose()``).
        """
        item: ReceiveT = run_blocking(self._channel.pipe, self._channel.recv())
        return item

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether :meth:`recv` would return without waiting, waiting up to ``timeout``
        seconds (``None``: no limit) for that to be so."""
        channel = self._channel
        deadline = None if timeout is None else time.monotonic() + timeout
        while not channel.poll():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            channel.pipe.wait(_READABLE, remaining)
        return True

    def __iter__(self) -> Iterator[ReceiveT]:
        """The parent's items until it closes its side."""
        while True:
            try:
                yield self.recv()
            except EOFError:
                return

    def __repr__(self) -> str:
        return "<anypool.ChannelEnd>"


class AsyncChannelEnd(Generic[SendT, ReceiveT]):
    """The worker's end of a channel for ``async def`` functions: as :class:`ChannelEnd`
    (same type parameters, same names), with awaitable methods that let the worker's event
    loop run other tasks while they wait."""

    __slots__ = ("_channel", "_event_loop")

    def __init__(self, channel: ChannelState, event_loop: str) -> None:
        self._channel = channel
        self._event_loop = event_loop

    async def send(self, item: SendT) -> None:
        """As :meth:`ChannelEnd.send`."""
        await run_async(self._channel.pipe, self._channel.send(item), self._event_loop)

    async def recv(self) -> ReceiveT:
        """As :meth:`ChannelEnd.recv`."""
        item: ReceiveT = await run_async(self._channel.pipe, self._channel.recv(), self._event_loop)
        return item

    def __aiter__(self) -> AsyncIterator[ReceiveT]:
        return self._items()

    async def _items(self) -> AsyncIterator[ReceiveT]:
        while True:
            try:
                yield await self.recv()
            except EOFError:
                return

    def __repr__(self) -> str:
        return "<anypool.AsyncChannelEnd>"


ChannelEnd.__module__ = "anypool"
AsyncChannelEnd.__module__ = "anypool"
