"""An :class:`anypool.Queue` in a worker: blocking put and get, which the parent serves."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Generic, NoReturn, TypeVar

from ...._serialize import dumps_item, loads
from .. import wire
from . import pipe

__all__ = ["WorkerQueue"]

T = TypeVar("T")


class WorkerQueue(Generic[T]):
    """An :class:`anypool.Queue` as a call running in a worker receives it.

    The items live in the parent; each operation is a request over the worker's pipe, which the
    parent answers when the operation can complete. Use it from the thread that runs the call.

    Annotate the worker function's parameter ``WorkerQueue[T]`` and pass the call the parent's
    ``Queue[T]``: type checkers take a ``Queue[T]`` for a ``WorkerQueue[T]``, as the worker
    receives one in its place.
    """

    __slots__ = ("_id", "maxsize")

    def __init__(self, queue_id: int, maxsize: int) -> None:
        self._id = queue_id
        self.maxsize = maxsize

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put ``item`` in the queue, waiting for room if ``block`` (at most ``timeout``
        seconds).

        Raises:
            queue.Full: no room (in time).
            ValueError: the queue is closed.
            SerializationError: ``item`` cannot be pickled.
        """
        data = dumps_item(item, "put in an anypool.Queue")
        self._request(wire.QUEUE_PUT, block, timeout, data)

    def put_nowait(self, item: T) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Take the next item, waiting for one if ``block`` (at most ``timeout`` seconds).

        Raises:
            queue.Empty: no item (in time).
            EOFError: the queue is closed and empty.
        """
        item: T = loads(self._request(wire.QUEUE_GET, block, timeout, b""))
        return item

    def get_nowait(self) -> T:
        """``get(block=False)``."""
        return self.get(block=False)

    def __iter__(self) -> Iterator[T]:
        """The items, as they come, until the queue is closed and empty."""
        while True:
            try:
                yield self.get()
            except EOFError:
                return

    def _request(
        self, kind: int, block: bool, timeout: float | None, data: bytes
    ) -> bytes | bytearray:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must not be negative, not {timeout}")
        request = wire.QUEUE_REQUEST.pack(self._id, block, -1.0 if timeout is None else timeout)
        reply = pipe.current().request(kind, request + data)
        (status,) = wire.REPLY.unpack_from(reply)
        if status == wire.REPLY_OK:
            return reply[wire.REPLY.size :]
        if status == wire.REPLY_FULL:
            raise queue.Full
        if status == wire.REPLY_EMPTY:
            raise queue.Empty
        if status == wire.REPLY_CLOSED:
            if kind == wire.QUEUE_GET:
                raise EOFError("the queue is closed and empty")
            raise ValueError("the queue is closed")
        raise RuntimeError("the queue no longer exists in the parent process")

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "an anypool.Queue cannot be passed on from a worker; pass it to each call instead"
        )

    def __repr__(self) -> str:
        return f"<anypool.Queue maxsize={self.maxsize} (in a worker)>"


WorkerQueue.__module__ = "anypool"
