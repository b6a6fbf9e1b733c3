"""What runs inside a Ray task: the same worker-side code as a local worker's, on a pickled call.

Imported by Ray workers (by reference, as this module's functions are): it must stay free of
anyio, and import Ray nowhere.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import sys
import time
import types
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Final

from ..._serialize import OutOfBand, Payload, dumps
from ..local import wire
from ..local.child.worker import (
    CallNotLoaded,
    load_call,
    pickle_item,
    report_error,
    run_pickled_call,
    start_generator,
)

__all__ = ["ITEMS", "for_ray", "run_call", "run_stream"]

ITEMS: Final = 100
"""The kind of a batch of a stream's items: ``(ITEMS, pickled list)``."""
_BATCH_SECONDS: Final = 0.005
"""A batch of a stream's items is sent once it is this old, full or not: a slow generator's
items are not held back."""


def for_ray(payload: Payload) -> Any:
    """``payload`` as Ray can carry it: large buffers as ``PickleBuffer``, which Ray's own
    serializer sends out of band (a memoryview it cannot pickle at all)."""
    if isinstance(payload, OutOfBand):
        return OutOfBand(payload.data, [pickle.PickleBuffer(buffer) for buffer in payload.buffers])
    return payload


def run_call(payload: Payload, sys_path: Sequence[str]) -> tuple[int, Any]:
    """Run the pickled call ``(fn, args, kwargs, event_loop)`` and return its outcome as a
    local worker sends it: ``(RESULT, pickled result)`` or ``(ERROR, pickled ErrorReport)``.

    ``sys_path`` is the caller's: where functions pickled by reference are found (a Ray worker
    starts with its own path). Entries that do not exist on this machine are left out.
    """
    _use_paths(sys_path)
    kind, body = run_pickled_call(payload)
    return kind, for_ray(body)


def run_stream(payload: Payload, sys_path: Sequence[str], batch: int) -> Iterator[Any]:
    """Run the pickled generator call ``(fn, args, kwargs, event_loop, buffer)`` as a Ray
    streaming generator: its items in batches of at most ``batch`` (a Ray object each costs far
    more than an item), ``(ITEMS, pickled list)``; a last ``(ERROR, pickled ErrorReport)`` if
    it raised, or an item could not be pickled (the items before it come first)."""
    _use_paths(sys_path)
    try:
        fn, args, kwargs, event_loop, _ = load_call(payload)
        generator = start_generator(fn, args, kwargs)
    except CallNotLoaded as failure:
        yield wire.ERROR, failure.report
        return
    except BaseException as error:
        yield wire.ERROR, report_error(error)
        return
    items: Generator[Any, None, None] = (
        _async_items(generator, event_loop)
        if isinstance(generator, types.AsyncGeneratorType)
        else generator
    )
    pending: list[Any] = []
    began = time.monotonic()
    try:
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except BaseException as error:
                if (yield from _batches(pending, generator)):
                    yield wire.ERROR, report_error(error)
                return
            pending.append(item)
            if len(pending) >= batch or time.monotonic() - began >= _BATCH_SECONDS:
                if not (yield from _batches(pending, generator)):
                    return
                pending, began = [], time.monotonic()
        yield from _batches(pending, generator)
    finally:
        # Ended early (an item could not be pickled): GeneratorExit. (A caller that leaves
        # kills the task instead.)
        with contextlib.suppress(Exception):
            items.close()


def _batches(items: list[Any], generator: Any) -> Generator[tuple[int, Any], None, bool]:
    """``items`` as one ITEMS batch; or, if one of them cannot be pickled, the batch of those
    before it, then the ERROR that names it. Returns whether the stream may go on."""
    if not items:
        return True
    try:
        batch = dumps(items, out_of_band=True)
    # BaseException: a __reduce__ may raise anything, and must not end the task.
    except BaseException:
        for position, item in enumerate(items):
            kind, data = pickle_item(item, generator)
            if kind == wire.ERROR:
                if position:
                    yield ITEMS, for_ray(dumps(items[:position], out_of_band=True))
                yield wire.ERROR, data
                return False
        raise
    yield ITEMS, for_ray(batch)
    return True


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


def _use_paths(sys_path: Sequence[str]) -> None:
    for entry in reversed(sys_path):
        if entry not in sys.path and os.path.isdir(entry or "."):
            sys.path.insert(1, entry)
