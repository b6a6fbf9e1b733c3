"""The async iterator that ``pool.map`` and ``pool.stream`` return."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from ._errors import raised_in_worker

__all__ = ["ResultIterator", "ResultSource"]

T = TypeVar("T")
# What ``async with`` binds: the iterator itself, as its own type (MapResults has batches()).
_Self = TypeVar("_Self", bound="ResultIterator[Any]")


class ResultSource(Protocol):
    """What produces the results: a map's chunks or a stream's worker."""

    def enter(self) -> None:
        """The consumer entered ``async with``: start early if that helps."""

    async def next(self) -> Any:
        """The next result; ``StopAsyncIteration`` at the end."""

    async def aclose(self) -> None:
        """Stop, cancelling the work still running; idempotent."""

    def abandon(self) -> None:
        """Stop in the background: nobody holds the iterator any more."""


class ResultIterator(Generic[T]):
    """An async iterator and async context manager over a :class:`ResultSource`.

    Leaving ``async with``, :meth:`aclose`, or dropping the last reference to this object stops
    the work still running. (The background work holds the source, never this object, so that
    a consumer walking away from a bare ``async for`` lets it be collected.)
    """

    __slots__ = ("_source",)

    def __init__(self, source: ResultSource) -> None:
        self._source = source

    async def __aenter__(self: _Self) -> _Self:
        self._source.enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._source.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            result: T = await self._source.next()
        except Exception as error:
            if not raised_in_worker(error):
                raise
            # (As in Pool.run: the caller's line, then the worker's traceback.)
            raise error.with_traceback(None) from error.__cause__
        return result

    async def aclose(self) -> None:
        """Stop, cancelling the work still running; idempotent."""
        await self._source.aclose()

    def __del__(self) -> None:
        # No _source when the constructor's arguments were invalid.
        source: ResultSource | None = getattr(self, "_source", None)
        if source is not None:
            source.abandon()
