"""A stream's items in batches, for the engines (Ray, Dask) where an object sent costs far more
than an item: the worker side of their streams (the caller's is ``_engine.BatchedStream``).

Imported by worker processes: it must stay free of anyio (tests/test_architecture.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import types
from collections import deque
from collections.abc import Generator, Iterator
from typing import Any, Final

from .._serialize import PLAIN_TYPES, Payload, dumps, dumps_each, with_pickle_buffers
from ._execution import (
    ERROR,
    CallNotLoaded,
    load_call,
    pickle_item,
    report_error,
    start_generator,
)

__all__ = ["EACH", "ITEMS", "largest_batch", "run_stream"]

ITEMS: Final = 100
"""The kind of a batch of a stream's plain items: ``(ITEMS, pickled list)``."""
EACH: Final = 101
"""The kind of a batch of a stream's other items: ``(EACH, a pickle each)`` (``dumps_each``)."""
_STREAM_BATCH: Final = 256
"""The most items of a stream in one object of the engine's."""
_CLOSE_SECONDS: Final = 1.0
"""How long a stream that ends early waits for its generator to take ``GeneratorExit``."""


def run_stream(payload: Payload, batch: int) -> Iterator[Any]:
    """Run the pickled generator call ``(fn, args, kwargs, event_loop, buffer)``: its items in
    batches of at most ``batch`` (an engine's object each costs far more than an item),
    ``(ITEMS, pickled list)`` or ``(EACH, a pickle each)``; a last ``(ERROR, pickled
    ErrorReport)`` if it raised, or an item could not be pickled (the items before it come
    first)."""
    try:
        fn, args, kwargs, event_loop, _ = load_call(payload)
        generator = start_generator(fn, args, kwargs)
    except CallNotLoaded as failure:
        yield ERROR, failure.report
        return
    except BaseException as error:
        yield ERROR, report_error(error)
        return
    items: Generator[Any, None, None] = (
        _async_items(generator, event_loop)
        if isinstance(generator, types.AsyncGeneratorType)
        else generator
    )
    producer = _Producer(items, room=batch)
    try:
        while True:
            taken, end = producer.take(batch)
            if not (yield from _batches(taken, generator)):
                return
            if end is not None:
                if end.error is not None:
                    yield ERROR, report_error(end.error)
                return
    finally:
        # Ended early (an item could not be pickled): the generator gets GeneratorExit. (A
        # caller that leaves kills the process instead.)
        producer.stop()


def largest_batch(buffer: int) -> int:
    """The largest batch that keeps a stream's generator at most ``buffer`` items ahead of
    its consumer. Ahead are at most: what is left of the batch the consumer is taking, two
    batches sent (Ray holds the generator back while one is unread, and one is held back; Dask's
    stream is given two credits), the hand-over's room of a batch, and the item the generator
    waits to hand over."""
    return max(1, min(_STREAM_BATCH, (buffer - 1) // 4))


@dataclasses.dataclass
class _End:
    error: BaseException | None
    """What the generator raised; ``None`` if it returned."""


class _Producer:
    """Runs a generator in a thread of its own, handing its items over through a deque of
    ``room`` places (the generator is held back while they are full).

    So that an item goes out once it is yielded: were the generator run where the batches are
    sent, an item would wait there until the generator yielded the next one, however long the
    generator takes (or blocks) before it. The hand-over costs no lock per item: each side
    takes the condition only to sleep, or to wake the other where it sleeps. (Appending,
    popping and reading a flag are atomic under the GIL; each side sets its flag and looks
    again under the lock before it sleeps, the other looks at the flag after it has changed
    the deque: neither misses the other's change.)
    """

    def __init__(self, items: Generator[Any, None, None], *, room: int) -> None:
        self._items = items
        self._room = room
        self._handed: deque[Any] = deque()
        self._condition = threading.Condition()
        self._taker_sleeps = False
        self._producer_sleeps = False
        self._leaving = False
        self._thread = threading.Thread(
            target=self._produce, name="anypool-stream-generator", daemon=True
        )
        self._thread.start()

    def take(self, most: int) -> tuple[list[Any], _End | None]:
        """The items handed over, at most ``most``, once there is one; and the generator's end,
        if it came. What a fast generator yields while a batch is sent makes the next batch; a
        slow one's items go one by one, none held back for the next."""
        handed = self._handed
        while not handed:
            self._wake_producer()
            with self._condition:
                self._taker_sleeps = True
                if not handed:
                    self._condition.wait()
                self._taker_sleeps = False
        taken: list[Any] = []
        end = None
        while handed and len(taken) < most:
            item = handed.popleft()
            if type(item) is _End:
                end = item
                break
            taken.append(item)
        self._wake_producer()
        return taken, end

    def stop(self) -> None:
        """Let the generator end, closed (``GeneratorExit``) if it had not, within
        :data:`_CLOSE_SECONDS` (a generator that will not end is left to the process's end)."""
        self._leaving = True
        with self._condition:
            self._condition.notify_all()
        self._thread.join(_CLOSE_SECONDS)

    def _produce(self) -> None:
        handed = self._handed
        end = _End(None)
        try:
            for item in self._items:
                handed.append(item)
                self._wake_taker()
                if len(handed) >= self._room:
                    with self._condition:
                        self._producer_sleeps = True
                        while len(handed) >= self._room and not self._leaving:
                            self._condition.wait()
                        self._producer_sleeps = False
                if self._leaving:
                    break
        except BaseException as error:
            end = _End(error)
        finally:
            if self._leaving:
                with contextlib.suppress(BaseException):
                    self._items.close()
        handed.append(end)
        self._wake_taker()

    def _wake_taker(self) -> None:
        if self._taker_sleeps:
            with self._condition:
                self._condition.notify_all()

    def _wake_producer(self) -> None:
        if self._producer_sleeps:
            with self._condition:
                self._condition.notify_all()


def _batches(items: list[Any], generator: Any) -> Generator[tuple[int, Any], None, bool]:
    """``items`` as one batch: ``(ITEMS, a list's pickle)`` where they are all plain values,
    which unpickle anywhere; else ``(EACH, a pickle each)``, so that the items before one that
    cannot be unpickled in the caller still reach it (``loads_each``). If one of them cannot be
    pickled, the batch of those before it, then the ERROR that names it. Returns whether the
    stream may go on."""
    if not items:
        return True
    if PLAIN_TYPES.issuperset(map(type, items)):
        yield ITEMS, with_pickle_buffers(dumps(items, out_of_band=True))
        return True
    payload, count = dumps_each(items)
    if count:
        yield EACH, with_pickle_buffers(payload)
    if count == len(items):
        return True
    kind, data = pickle_item(items[count], generator)
    if kind != ERROR:
        raise AssertionError("an item that could not be pickled was pickled the second time")
    yield ERROR, data
    return False


def _async_items(generator: Any, event_loop: str) -> Generator[Any, None, None]:
    """The items of an async generator, each awaited on the caller's kind of event loop."""

    async def step() -> Any:
        return await generator.__anext__()

    if event_loop == "trio":
        yield from _trio_items(generator)
        return
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(step())
            except StopAsyncIteration:
                return
    finally:
        with contextlib.suppress(BaseException):
            loop.run_until_complete(generator.aclose())
        loop.close()


def _trio_items(generator: Any) -> Generator[Any, None, None]:
    """The items of an async generator run by one ``trio.run`` in a thread of its own (trio
    closes a run's async generators when the run ends, so it cannot be stepped run by run),
    handed over one at a time."""
    import threading

    import trio

    handover: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    leaving = threading.Event()

    async def pump() -> None:
        end: tuple[bool, Any] = (False, None)
        try:
            async for item in generator:
                # (The queue holds one item: the consumer's pace holds the generator back.)
                await trio.to_thread.run_sync(handover.put, (True, item))
                if leaving.is_set():
                    return
        except BaseException as error:
            end = (False, error)
        finally:
            with contextlib.suppress(BaseException):
                await generator.aclose()
        if not leaving.is_set():
            handover.put(end)

    thread = threading.Thread(target=trio.run, args=(pump,), name="anypool-trio-generator")
    thread.start()
    try:
        while True:
            ok, item = handover.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        # The consumer left (or the end came): let the pump end. Taking what it may be
        # handing over makes room for its last put, after which it sees that we left.
        leaving.set()
        with contextlib.suppress(queue.Empty):
            handover.get_nowait()
        thread.join()
