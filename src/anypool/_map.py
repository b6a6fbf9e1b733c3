"""``pool.map``: one function over many items, with lazy input and bounded memory."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import anyio

from ._arguments import check_callable, check_count, check_flag, check_iterable
from ._errors import raised_in_worker
from ._eventloop import checkpoint, spawn_detached
from ._results import ResultIterator
from ._serialize import load_error
from .backends._base import Backend, Chunk, ChunkRunner

if TYPE_CHECKING:
    from ._pool import CallOptions

__all__ = ["MapResults"]

T = TypeVar("T")

AUTO_CHUNK_LIMIT = 16384
"""The most items in a chunk ``chunksize="auto"`` makes. (A chunk costs a round trip to a
worker, some 100-300 microseconds: tiny functions need thousands of items per chunk.)"""
_AUTO_CHUNK_BYTES = 1 << 20
"""The most pickled bytes ``chunksize="auto"`` aims to put in a chunk: large items go a few at
a time, so that memory in flight stays small."""
_CHUNKS_IN_FLIGHT = 3
"""The default ``max_in_flight``, in chunks per worker: one running, one pickled and ready for
the moment it is done, and one whose results the consumer is taking."""
_AUTO_CHUNK_SECONDS = 0.01
"""How long ``chunksize="auto"`` aims for a chunk to run: long enough that the round trip to the
worker is a small part of it, short enough that results keep flowing."""


class _Signal:
    """Wakes the tasks waiting for a change; a task checks its condition, then waits."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class MapResults(ResultIterator[T]):
    """The results of :meth:`Pool.map`, as an async iterator and an async context manager.

    Input is taken from the iterable by a background task, a chunk at a time, at most
    ``max_in_flight`` items ahead of the results handed out, and run in lanes, each a chunk at a
    time on one worker, as many as the pool has workers. Leaving ``async with``,
    :meth:`aclose`, or dropping the last reference to this object cancels the calls still
    running, killing their workers as a cancelled :meth:`Pool.run` does.
    """

    __slots__ = ("_run",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._run = _MapRun(*args, **kwargs)
        super().__init__(self._run)

    async def batches(self) -> AsyncIterator[list[T]]:
        """The same results, as lists of those that are ready: for consumers that keep up
        with millions of results per second, where a loop step per result is the cost.

        Each list holds at least one result, in the same order as a plain iteration would
        give them; an exception is raised (or with ``return_exceptions``, placed) where that
        iteration would raise it.
        """
        run = self._run
        while True:
            try:
                batch: list[T] = [await run.next()]
            except StopAsyncIteration:
                return
            batch.extend(run.ready)
            while run.has_ready_part():
                batch.append(await run.next())
                batch.extend(run.ready)
            yield batch

    async def __aiter__(self) -> AsyncIterator[T]:
        # What `async for` iterates is this async generator, whose step per result costs two
        # thirds of an `async def __anext__` call (no coroutine object per result), and which
        # reads a chunk's ready results in a plain `for`. It holds `self`, not only the run:
        # the loop holds nothing else, and dropping the last reference to this object stops
        # the map. A loop left early leaves the generator suspended after a result it handed
        # out: closing it loses nothing, and another `async for` or `__anext__` goes on from
        # there.
        run = self._run
        while True:
            for result in run.ready:
                yield result
            try:
                result = await run.next()
            except StopAsyncIteration:
                return
            except Exception as error:
                if not raised_in_worker(error):
                    raise
                # (As in Pool.run: the caller's line, then the worker's traceback.)
                raise error.with_traceback(None) from error.__cause__
            yield result

    async def __anext__(self) -> T:
        # The fast path, for all results but the first of each run of successes in a chunk:
        # one C-level next(); the bookkeeping is done per chunk.
        result: T = next(self._run.ready, _NONE)
        if result is _NONE:
            # Awaited outside an except block: errors from it get no StopIteration context.
            try:
                result = await self._run.next()
            except Exception as error:
                if not raised_in_worker(error):
                    raise
                # (As in Pool.run: the caller's line, then the worker's traceback.)
                raise error.with_traceback(None) from error.__cause__
        return result


_NONE: Any = object()
"""No result ready (a sentinel no result can be)."""


class _Failure:
    """An item's exception, in its place among the results."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Last:
    """The last result of a chunk: handed out by the slow path, which accounts for the chunk
    (the fast path never learns that an iterator just gave its last item)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _MapRun:
    """The state of one map: the background task that feeds chunks, and the results."""

    def __init__(
        self,
        backend: Backend,
        options: CallOptions,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool,
        chunksize: int | Literal["auto"],
        max_in_flight: int | None,
        return_exceptions: bool,
        progress: bool | Callable[[int, int | None], object] | None,
    ) -> None:
        check_callable("fn", fn)
        check_iterable("iterable", iterable)
        if chunksize != "auto":
            chunksize = check_count("chunksize", chunksize, expected="an int or 'auto'")
        max_in_flight = check_count("max_in_flight", max_in_flight, optional=True)
        check_flag("ordered", ordered)
        check_flag("return_exceptions", return_exceptions)
        if not (progress is None or isinstance(progress, bool) or callable(progress)):
            raise TypeError(f"progress must be True, False, None or a callable, not {progress!r}")
        # By default _CHUNKS_IN_FLIGHT chunks per worker; with "auto", of the current size.
        self._default_in_flight = max_in_flight is None
        if max_in_flight is None:
            max_in_flight = (
                _CHUNKS_IN_FLIGHT * backend.capacity * (1 if chunksize == "auto" else chunksize)
            )
        self._backend = backend
        self._options = options
        self.fn = fn
        self._iterable = iterable
        self._ordered = ordered
        self._auto = chunksize == "auto"
        self._chunksize = 1 if chunksize == "auto" else chunksize
        self._max_in_flight = max_in_flight
        self._return_exceptions = return_exceptions
        self._progress = _Progress(progress, iterable)

        # Items taken from the input whose results have not been handed out yet.
        self._taken = 0
        self._chunks_made = 0
        # Chunks taken whose results are not in _finished yet, and those of them no worker
        # was sent yet (see ChunkFeed); what runs them.
        self._chunks_running = 0
        self.to_run: deque[Chunk] = deque()
        self._runner: ChunkRunner
        # Finished chunks by index: their results, the positions of failures among them, and
        # how many items they took.
        self._finished: dict[int, tuple[list[Any], list[int], int]] = {}
        self._next_index = 0
        # The chunk being handed out: runs of results, and the exceptions between them.
        self.ready: Iterator[Any] = iter(())
        self._parts: deque[Iterator[Any] | _Failure | _Last] = deque()
        self._current_size = 0
        self._input_error: BaseException | None = None
        self._input_done = False
        self._changed = _Signal()
        self._room = _Signal()

        self._started = False
        self.closed = False
        self._scope = anyio.CancelScope()
        self._stopped: anyio.Event | None = None

    async def next(self) -> Any:
        """The next result; raises StopAsyncIteration at the end."""
        if self.closed:
            raise StopAsyncIteration
        self.start()
        while True:
            if self._parts:
                part = self._parts.popleft()
                if isinstance(part, (_Failure, _Last)):
                    if not self._parts:
                        # The chunk's last item: its items leave the count in flight.
                        self.handed_out(self._current_size)
                    if isinstance(part, _Last):
                        return part.value
                    if self._return_exceptions:
                        return part.error
                    await self.aclose()
                    raise part.error
                self.ready = part
                for value in part:
                    return value
                continue
            if self._take_finished_chunk():
                continue
            if self._input_done and not self._chunks_running:
                error, self._input_error = self._input_error, None
                await self.aclose()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            await self._changed.wait()

    def has_ready_part(self) -> bool:
        """Whether :meth:`next` has results (or an exception to yield) without waiting."""
        return bool(self._parts) and (
            self._return_exceptions or not isinstance(self._parts[0], _Failure)
        )

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.ready = iter(())
        self._parts.clear()
        self._progress.close()
        if self._stopped is not None:
            self._scope.cancel()
            with anyio.CancelScope(shield=True):
                await self._stopped.wait()

    def abandon(self) -> None:
        """Cancel the background work without waiting for it (nobody is left to wait)."""
        if self._started and not self.closed:
            self.closed = True
            self._progress.close()
            # The event loop may be gone already; then so is the work.
            with contextlib.suppress(Exception):
                self._scope.cancel()

    # --- consumer side ---------------------------------------------------------------------

    def enter(self) -> None:
        self.start()

    def start(self) -> None:
        if self._started:
            return
        self._backend.check_open()
        self._started = True
        self._stopped = anyio.Event()
        spawn_detached(self._feed)

    def _take_finished_chunk(self) -> bool:
        if self._ordered:
            entry = self._finished.pop(self._next_index, None)
        else:
            entry = self._finished.pop(next(iter(self._finished)), None) if self._finished else None
        if entry is None:
            return False
        self._next_index += 1
        results, failures, self._current_size = entry
        parts = self._parts
        start = 0
        for position in failures:
            if position > start:
                parts.append(iter(results[start:position]))
            # A worker reports an item's exception pickled; a chunk's own failure is local.
            error = results[position]
            parts.append(_Failure(load_error(error) if isinstance(error, bytes) else error))
            start = position + 1
        last = len(results) - 1
        if start < last:
            parts.append(iter(results[start:last] if start else results[:last]))
        if start <= last:
            parts.append(_Last(results[last]))
        if not parts:
            self.handed_out(self._current_size)
        return True

    def handed_out(self, count: int) -> None:
        if count:
            self._taken -= count
            self._progress.advance(count)
            self._room.notify()

    # --- background side -------------------------------------------------------------------

    async def _feed(self) -> None:
        # Runs detached from the consumer, so that input keeps flowing between its awaits; the
        # cancel scope is how the consumer stops it.
        try:
            with self._scope:
                async with anyio.create_task_group() as group:
                    self._runner = self._backend.run_chunks(
                        self, group, kill_on_cancel=self._options.kill_on_cancel
                    )
                    await self._take_input()
        except BaseException as error:
            if not isinstance(error, anyio.get_cancelled_exc_class()):
                self._input_error = error
        finally:
            self._input_done = True
            assert self._stopped is not None
            self._stopped.set()
            self._changed.notify()

    async def _take_input(self) -> None:
        iterable = self._iterable
        async_items: AsyncIterator[Any] | None = None
        sync_items: Iterator[Any] | None = None
        # A range, list or tuple is taken in slices (see below), anything else item by item
        # (a subclass too: it may iterate its own way).
        sliced = cast("Sequence[Any]", iterable) if type(iterable) in (range, list, tuple) else None
        position = 0
        if isinstance(iterable, AsyncIterable):
            async_items = aiter(iterable)
        elif sliced is None:
            sync_items = iter(iterable)
        chunk: list[Any] = []
        exhausted = False
        while not exhausted:
            full = min(self._chunksize, self._max_in_flight)
            if len(chunk) >= full:
                self._add_chunk(chunk)
                chunk = []
                # Let the lanes send it before the next one is pickled.
                await checkpoint()
                continue
            if len(chunk) + self._max_in_flight - self._taken < full:
                # No room for a full chunk until the consumer takes results. (Waiting for a
                # full chunk's room, rather than sending the room there is, keeps chunks large
                # when the consumer is the slower side.)
                await self._room.wait()
                continue
            wanted = full - len(chunk)
            if sliced is not None:
                # One slice, at the speed of a copy, where an iterator would take the items
                # one by one. A range goes out in ranges: a chunk pickles in a few bytes,
                # whatever its length, and the worker unpickles no items either.
                part = sliced[position : position + wanted]
                position += len(part)
                self._taken += len(part)
                # Ended only by a short slice, as list iteration ends: items appended to a list
                # before then are taken too. (Not len(sliced): a range may be longer than
                # sys.maxsize.)
                exhausted = len(part) < wanted
                if part:
                    self._add_chunk(part)
                    await checkpoint()
                continue
            if sync_items is not None:
                # Take the items in one C-level loop: per-item Python code limits throughput.
                # (list.extend keeps the items taken before the input raised.)
                taken: list[Any] = []
                try:
                    taken.extend(itertools.islice(sync_items, wanted))
                except Exception as error:
                    self._input_error = error
                    exhausted = True
                else:
                    exhausted = len(taken) < wanted
            else:
                assert async_items is not None
                try:
                    taken = [await anext(async_items)]
                except StopAsyncIteration:
                    taken, exhausted = [], True
                except Exception as error:
                    taken, exhausted = [], True
                    self._input_error = error
            chunk += taken
            self._taken += len(taken)
        if chunk:
            self._add_chunk(chunk)

    def _add_chunk(self, items: Sequence[Any]) -> None:
        """Pickle a chunk's call and queue it for the lanes."""
        index = self._chunks_made
        self._chunks_made += 1
        self._chunks_running += 1
        try:
            packed, size = self._backend.pack_chunk(
                self.fn, items, raise_first=not self._return_exceptions
            )
        except Exception as error:
            # An item cannot be pickled: every item of its chunk gets the error.
            self.chunk_failed(Chunk(index, len(items), None, 0), error)
            return
        self.to_run.append(Chunk(index, len(items), packed, size))
        self._runner.more()

    def chunk_done(
        self, chunk: Chunk, results: list[Any], failures: list[int], seconds: float
    ) -> None:
        if self._auto:
            self._resize_chunks(chunk.items, seconds, chunk.size)
        self._done(chunk, results, failures)

    def chunk_failed(self, chunk: Chunk, error: BaseException) -> None:
        """The chunk as a whole failed (its worker died, an item could not be pickled): every
        item it held gets ``error``."""
        results = [error] * (chunk.items if self._return_exceptions else 1)
        self._done(chunk, results, list(range(len(results))))

    def _done(self, chunk: Chunk, results: list[Any], failures: list[int]) -> None:
        self._finished[chunk.index] = (results, failures, chunk.items)
        self._chunks_running -= 1
        self._changed.notify()

    def _resize_chunks(self, size: int, seconds: float, payload_bytes: int) -> None:
        by_time = _AUTO_CHUNK_SECONDS * size / max(seconds, 1e-9)
        by_bytes = _AUTO_CHUNK_BYTES * size / payload_bytes
        self._chunksize = max(1, min(AUTO_CHUNK_LIMIT, math.floor(min(by_time, by_bytes))))
        if self._default_in_flight:
            self._max_in_flight = _CHUNKS_IN_FLIGHT * self._backend.capacity * self._chunksize
            self._room.notify()


class _Progress:
    """Reports results handed out: to a callable, or on a tqdm progress bar."""

    def __init__(
        self,
        progress: bool | Callable[[int, int | None], object] | None,
        iterable: object,
    ) -> None:
        self._total: int | None = None
        if progress:
            # (A range longer than sys.maxsize has no len(): shown without a total.)
            with contextlib.suppress(TypeError, OverflowError):
                self._total = len(iterable)  # type: ignore[arg-type]
        self._done = 0
        self._callback: Callable[[int, int | None], object] | None = None
        self._bar: Any = None
        if progress is True:
            try:
                from tqdm.auto import tqdm
            except ImportError as error:
                raise ImportError(
                    "progress=True needs tqdm: install anypool[progress], or pass a callable"
                ) from error
            self._bar = tqdm(total=self._total)
        elif callable(progress):
            self._callback = progress

    def advance(self, count: int) -> None:
        self._done += count
        if self._callback is not None:
            self._callback(self._done, self._total)
        elif self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


MapResults.__module__ = "anypool"
