"""``anypool.Queue``: a queue in the parent that calls running in workers put to and get from."""

from __future__ import annotations

import contextlib
import math
import queue
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from ._serialize import dumps_item, load_value
from .backends._base import Feature, QueueStatus, register_queue, require_while_pickling
from .backends.local.child.queue import WorkerQueue

__all__ = ["Queue"]

T = TypeVar("T")

if TYPE_CHECKING:
    # A type checker sees a Queue as what a worker receives in its place, so that the one
    # annotation a worker function's parameter needs, `WorkerQueue[T]`, accepts the `Queue[T]`
    # the parent passes to `run` (whose argument types follow the function's). Only the checker
    # sees this base: at run time a Queue is no WorkerQueue, and pickling turns it into one.
    # Where the two differ (put and get are awaited here and block there; iteration; pickling)
    # the overrides below are marked: parent code that holds a Queue as a WorkerQueue is the
    # one thing the checker no longer catches.
    _QueueBase = WorkerQueue
else:
    _QueueBase = Generic


class Queue(_QueueBase[T]):
    """A FIFO queue that the parent awaits and calls running in workers use, blocking.

    Pass it as an argument (or inside one) to :meth:`Pool.run`, :meth:`Pool.map`,
    :meth:`Pool.stream` or :meth:`Pool.open_channel`: in the worker it is a
    :class:`WorkerQueue`, with ``put``, ``get``, their ``_nowait`` forms and iteration, as
    :class:`multiprocessing.Queue`. The items stay in this process and travel over the workers'
    own pipes: there is no feeder thread, no lock shared between processes, and a worker killed
    mid-``put`` cannot leave the queue broken.

    Typing: annotate the worker function's parameter ``WorkerQueue[T]`` and pass it a
    ``Queue[T]``; type checkers accept a ``Queue[T]`` wherever a ``WorkerQueue[T]`` is expected.
    (In the parent, use the queue as a ``Queue``: its ``put`` and ``get`` are awaited.)

    Args:
        maxsize: the most items the queue holds; ``put`` waits for room beyond it. ``0`` (the
            default) or less: no limit.

    :meth:`close` ends it: puts fail, and gets return the remaining items, then signal the end.
    """

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._send, self._receive = anyio.create_memory_object_stream[bytes](
            maxsize if maxsize > 0 else math.inf
        )
        # A call carries the id, not the queue.
        self._id = register_queue(self)

    async def put(self, item: T) -> None:  # type: ignore[override]
        """Put ``item`` in the queue, waiting while it is full.

        Raises:
            anyio.ClosedResourceError: the queue is closed.
            SerializationError: ``item`` cannot be pickled (every item is, as it is put).
        """
        await self._send.send(dumps_item(item, "put in an anypool.Queue"))

    def put_nowait(self, item: T) -> None:
        """Put ``item`` in the queue if it has room.

        Raises:
            queue.Full: it has none.
            anyio.ClosedResourceError: the queue is closed.
        """
        try:
            self._send.send_nowait(dumps_item(item, "put in an anypool.Queue"))
        except anyio.WouldBlock:
            raise queue.Full from None

    async def get(self) -> T:  # type: ignore[override]
        """Take the next item, waiting for one.

        Raises:
            anyio.EndOfStream: the queue is closed and empty.
        """
        return self._load(await self._receive.receive())

    def get_nowait(self) -> T:
        """Take the next item if there is one.

        Raises:
            queue.Empty: there is none.
            anyio.EndOfStream: the queue is closed and empty.
        """
        try:
            return self._load(self._receive.receive_nowait())
        except anyio.WouldBlock:
            raise queue.Empty from None

    def close(self) -> None:
        """Accept no more items; once the remaining ones are taken, gets signal the end
        (``anyio.EndOfStream`` here, ``EOFError`` in a worker). Idempotent."""
        self._send.close()

    def qsize(self) -> int:
        """The number of items in the queue."""
        return self._send.statistics().current_buffer_used

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    # Not iterable in the parent (`async for` is): this tells the type checker, which
    # otherwise takes WorkerQueue's `__iter__`.
    __iter__ = None  # type: ignore[assignment]

    def __aiter__(self) -> Queue[T]:
        return self

    async def __anext__(self) -> T:
        """The next item; the iteration ends once the queue is closed and empty."""
        try:
            return await self.get()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def __reduce__(self) -> tuple[type[WorkerQueue[T]], tuple[int, int]]:  # type: ignore[override]
        # What a worker receives: a handle that asks this process for each operation, over the
        # worker's pipe to it; a backend without such pipes refuses it here.
        require_while_pickling(Feature.QUEUE)
        return WorkerQueue, (self._id, self.maxsize)

    def __del__(self) -> None:
        # The streams warn when collected open; a queue needs no closing.
        with contextlib.suppress(AttributeError):
            self._send.close()
            self._receive.close()

    def __repr__(self) -> str:
        return f"<anypool.Queue maxsize={self.maxsize} qsize={self.qsize()}>"

    @staticmethod
    def _load(data: bytes) -> T:
        item: T = load_value(data, "an item of an anypool.Queue")
        return item

    # --- what workers ask for (see backends._base.QueueEndpoint) -------------------------------

    async def serve_put(self, data: bytes, block: bool, timeout: float) -> QueueStatus:
        try:
            if not block:
                self._send.send_nowait(data)
                return QueueStatus.OK
            with anyio.move_on_after(math.inf if timeout < 0 else timeout):
                await self._send.send(data)
                return QueueStatus.OK
        except anyio.WouldBlock:
            pass
        except anyio.ClosedResourceError:
            return QueueStatus.CLOSED
        return QueueStatus.FULL

    async def serve_get(self, block: bool, timeout: float) -> tuple[QueueStatus, bytes]:
        try:
            if not block:
                return QueueStatus.OK, self._receive.receive_nowait()
            with anyio.move_on_after(math.inf if timeout < 0 else timeout):
                return QueueStatus.OK, await self._receive.receive()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            return QueueStatus.CLOSED, b""
        return QueueStatus.EMPTY, b""


Queue.__module__ = "anypool"
