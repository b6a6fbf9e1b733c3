"""``pool.stream``: the items of a generator running in a worker, as it yields them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._eventloop import current_library, spawn_detached
from ._results import ResultIterator
from .backends._base import Backend, Call, StreamSession

if TYPE_CHECKING:
    from ._pool import CallOptions

__all__ = ["StreamResults"]

T = TypeVar("T")


class StreamResults(ResultIterator[T]):
    """The items of :meth:`Pool.stream`, as an async iterator and an async context manager.

    Leaving ``async with``, :meth:`aclose`, a cancellation, or dropping the last reference to
    this object closes the generator in the worker.
    """

    __slots__ = ()

    def __init__(
        self,
        backend: Backend,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        super().__init__(_Stream(backend, options.buffer, fn, args, kwargs))


class _Stream:
    """One stream: started at its first item, on a session of the pool's backend."""

    def __init__(
        self,
        backend: Backend,
        buffer: int,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._backend = backend
        self._buffer = buffer
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._session: StreamSession | None = None
        self._started = False

    async def next(self) -> Any:
        if self._started:
            raise StopAsyncIteration  # it could not start, or was closed before it did
        self._started = True
        self._backend.check_open()
        call = Call(self._fn, self._args, self._kwargs, current_library())
        self._session = await self._backend.open_stream(call, buffer=self._buffer)
        # From now on the items come straight from the session: a step fewer per item.
        self.next = self._session.next  # type: ignore[method-assign]
        return await self._session.next()

    def enter(self) -> None:
        # The stream starts at the first item: that is where its errors are raised.
        pass

    async def aclose(self) -> None:
        self._started = True
        if self._session is not None:
            await self._session.aclose()

    def abandon(self) -> None:
        """Close in the background: the consumer dropped the stream without closing it."""
        if self._session is not None:
            # Without a running event loop (at interpreter exit) the pool stops the worker.
            with contextlib.suppress(Exception):
                spawn_detached(self._session.aclose)


StreamResults.__module__ = "anypool"
