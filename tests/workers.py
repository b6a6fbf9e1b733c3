"""Functions the tests run in worker processes.

They live in an importable module so that workers under every start method can load them by
reference; the tests define lambdas and closures of their own to exercise pickling by value.
Files, not timing, coordinate a worker with its test: a worker writes its pid to a file, or
waits for a file the test creates.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

POLL_INTERVAL = 0.01


# --- coordination ----------------------------------------------------------------------------


def write_pid(path: Path) -> None:
    """Write this worker's pid to ``path`` atomically (a reader never sees a partial file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(os.getpid()))
    os.replace(partial, path)


def wait_for_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} did not appear within {timeout} s")
        time.sleep(POLL_INTERVAL)


def write_pid_and_sleep(path: Path, seconds: float) -> int:
    write_pid(path)
    time.sleep(seconds)
    return os.getpid()


def write_pid_and_wait_for(path: Path, release: Path, timeout: float = 30.0) -> int:
    write_pid(path)
    wait_for_path(release, timeout)
    return os.getpid()


def write_pid_wait_for_and_linger(path: Path, release: Path, linger: float) -> str:
    """Wait for ``release``, then keep running ``linger`` seconds more before returning."""
    write_pid(path)
    wait_for_path(release, 30.0)
    time.sleep(linger)
    return "finished"


def meet(own_marker: Path, other_marker: Path, timeout: float = 20.0) -> int:
    """Create ``own_marker`` and wait for ``other_marker``: two calls that meet this way can only
    both return if they run at the same time."""
    own_marker.touch()
    wait_for_path(other_marker, timeout)
    return os.getpid()


def note_sigterm_and_sleep(pid_path: Path, marker: Path, seconds: float) -> None:
    """Treat SIGTERM as a mere note (create ``marker``) and go on sleeping."""
    signal.signal(signal.SIGTERM, lambda signum, frame: marker.touch())
    write_pid(pid_path)
    time.sleep(seconds)


def sleep_then_return(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def touch_and_return(path: Path, value: object) -> object:
    path.touch()
    return value


def return_when_path_exists(path: Path, value: object, timeout: float = 10.0) -> object:
    wait_for_path(path, timeout)
    return value


def raise_value_error_when_path_exists(path: Path, message: str) -> None:
    wait_for_path(path, 20.0)
    raise ValueError(message)


# --- plain results ---------------------------------------------------------------------------


def current_pid() -> int:
    return os.getpid()


def square(x: int) -> int:
    return x * x


def combine(a: int, b: int, *, scale: int = 1, offset: int = 0) -> int:
    return (a + b) * scale + offset


def keyword_arguments(**kwargs: object) -> dict[str, object]:
    return kwargs


def identity(value: object) -> object:
    return value


def zeros(size: int) -> bytes:
    return bytes(size)


def square_unless_negative(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative item {x}")
    return x * x


def apply(call: tuple[Any, ...]) -> object:
    """Run ``call``, a tuple ``(function, *arguments)``: lets one map mix items that behave
    differently (one returns, one raises, one waits for a file)."""
    function, *arguments = call
    return function(*arguments)


async def running_event_loop() -> str:
    """Which event loop library runs this coroutine in the worker."""
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            await trio.sleep(0)
            return "trio"
    import asyncio

    asyncio.get_running_loop()
    await asyncio.sleep(0)
    return "asyncio"


# --- initializers ----------------------------------------------------------------------------

initialized_with: object = None
initializations = 0


def initialize(value: object) -> None:
    global initialized_with, initializations
    initialized_with = value
    initializations += 1


def initialization_state() -> tuple[object, int, int]:
    """What the initializer set in this worker, how often it ran, and this worker's pid."""
    return initialized_with, initializations, os.getpid()


def failing_initializer() -> None:
    raise ValueError("the initializer cannot start")


# --- errors ----------------------------------------------------------------------------------


def raise_value_error(message: str) -> None:
    raise ValueError(message)


class CustomError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def raise_custom_error(code: int, detail: str) -> None:
    raise CustomError(code, detail)


class UnpicklableError(Exception):
    """Pickling fails: the exception holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error() -> None:
    raise UnpicklableError("holds a lock")


class UnreducibleError(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("UnreducibleError refuses to be pickled")


def raise_unreducible_error() -> None:
    raise UnreducibleError("refuses pickling")


class UnbuildableError(Exception):
    """Pickles, but cannot be unpickled: __init__ wants two arguments, args holds one."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


def raise_unbuildable_error() -> None:
    raise UnbuildableError("this", "that")


def exit_with(code: int) -> None:
    sys.exit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def exit_immediately(code: int) -> None:
    os._exit(code)


def crash_with_segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def return_lock() -> threading.Lock:
    return threading.Lock()


def _refuse_to_load() -> None:
    raise RuntimeError("this object cannot be rebuilt")


class UnloadableResult:
    """Pickles fine in the worker; unpickling it raises."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_to_load, ())


def return_unloadable_result() -> UnloadableResult:
    return UnloadableResult()


# --- generators for pool.stream --------------------------------------------------------------


def _event_loop_library() -> str:
    """Which event loop library runs the current task: "trio" or "asyncio"."""
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    return "asyncio"


async def _sleep(seconds: float) -> None:
    """Sleep on whichever event loop runs the async generator in the worker."""
    if _event_loop_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        import asyncio

        await asyncio.sleep(seconds)


def count_up(n: int) -> Iterator[int]:
    yield from range(n)


async def async_count_up(n: int) -> AsyncIterator[int]:
    for item in range(n):
        await _sleep(0)
        yield item


async def yield_event_loop_library() -> AsyncIterator[str]:
    await _sleep(0)
    yield _event_loop_library()


def yield_then_wait_for(release: Path, first: object, second: object) -> Iterator[object]:
    """Yield ``first``, then block until ``release`` exists before yielding ``second``."""
    yield first
    wait_for_path(release, 20.0)
    yield second


async def async_yield_then_wait_for(
    release: Path, first: object, second: object
) -> AsyncIterator[object]:
    yield first
    deadline = time.monotonic() + 20.0
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release.name} did not appear within 20 s")
        await _sleep(POLL_INTERVAL)
    yield second


def _note_produced(log: Path, item: int) -> None:
    with log.open("a") as file:
        file.write(f"{item}\n")


def count_forever_logging(log: Path) -> Iterator[int]:
    """An endless, fast generator that appends a line to ``log`` for each item it produces."""
    for item in itertools.count():
        _note_produced(log, item)
        yield item


async def async_count_forever_logging(log: Path) -> AsyncIterator[int]:
    for item in itertools.count():
        _note_produced(log, item)
        yield item


def yield_pid_forever(outcome: Path) -> Iterator[int]:
    """Yield this worker's pid forever; on the way out, write to ``outcome`` what ended it
    ("GeneratorExit" when the generator is closed)."""
    ended_by = "nothing"
    try:
        while True:
            yield os.getpid()
    except BaseException as error:
        ended_by = type(error).__name__
        raise
    finally:
        outcome.write_text(ended_by)


async def async_yield_pid_forever(outcome: Path) -> AsyncIterator[int]:
    ended_by = "nothing"
    try:
        while True:
            yield os.getpid()
    except BaseException as error:
        ended_by = type(error).__name__
        raise
    finally:
        outcome.write_text(ended_by)


def yield_pid_forever_then_block_when_closed(closing: Path) -> Iterator[int]:
    """Yield this worker's pid forever; once closed, touch ``closing`` and block for a minute:
    only a kill ends it."""
    try:
        while True:
            yield os.getpid()
    finally:
        closing.touch()
        time.sleep(60)


async def async_yield_pid_forever_then_block_when_closed(closing: Path) -> AsyncIterator[int]:
    try:
        while True:
            yield os.getpid()
    finally:
        closing.touch()
        time.sleep(60)


def yield_then_raise(items: list[object], message: str) -> Iterator[object]:
    yield from items
    raise ValueError(message)


async def async_yield_then_raise(items: list[object], message: str) -> AsyncIterator[object]:
    for item in items:
        yield item
    raise ValueError(message)


def yield_then_exit(items: list[object], code: int) -> Iterator[object]:
    yield from items
    os._exit(code)


async def async_yield_then_exit(items: list[object], code: int) -> AsyncIterator[object]:
    for item in items:
        yield item
    os._exit(code)


def yield_a_lock_between(before: object, after: object) -> Iterator[object]:
    yield before
    yield threading.Lock()
    yield after


async def async_yield_a_lock_between(before: object, after: object) -> AsyncIterator[object]:
    yield before
    yield threading.Lock()
    yield after


def yield_an_unloadable_item_between(before: object, after: object) -> Iterator[object]:
    yield before
    yield UnloadableResult()
    yield after


async def async_yield_an_unloadable_item_between(
    before: object, after: object
) -> AsyncIterator[object]:
    yield before
    yield UnloadableResult()
    yield after


def yield_then_note_the_end(items: list[object], finished: Path) -> Iterator[object]:
    """Yield ``items``, then touch ``finished`` as the generator returns."""
    yield from items
    finished.touch()


async def async_yield_then_note_the_end(
    items: list[object], finished: Path
) -> AsyncIterator[object]:
    for item in items:
        yield item
    finished.touch()
