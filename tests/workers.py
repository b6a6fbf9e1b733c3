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


def append_pid_and_return(path: Path, value: object) -> object:
    """Add this process's pid as a line of ``path``: one line per run of the call."""
    with path.open("a") as file:
        file.write(f"{os.getpid()}\n")
    return value


def wait_for_then_exit(path: Path, code: int) -> None:
    wait_for_path(path, 30.0)
    os._exit(code)


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


def combine_anything(*args: object, **kwargs: object) -> tuple[object, ...]:
    return (args, kwargs)


def keyword_arguments(**kwargs: object) -> dict[str, object]:
    return kwargs


def identity(value: object) -> object:
    return value


def identity_with_pid_and_start_time(value: object) -> tuple[object, int, float]:
    """``value``, the worker's pid, and when the call started: ``time.monotonic()``, one clock
    for every process of the machine (Linux), so that the calls of two workers can be put in
    the order they started."""
    return value, os.getpid(), time.monotonic()


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


def async_library_seen_by_sync_code() -> str | None:
    """What sniffio says a plain function runs under: nothing, in a worker."""
    import sniffio

    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


def inherited_signal_state(signum: int) -> tuple[int, bool]:
    """The signal wake-up descriptor, and whether ``signum`` has its default handler."""
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    return wakeup_fd, signal.getsignal(signum) is signal.SIG_DFL


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


def hanging_initializer(pid_path: Path) -> None:
    write_pid(pid_path)
    time.sleep(60)


def initializer_failing_times(counter: Path, failures: int) -> None:
    """Raise the first ``failures`` times it runs (in any worker), then succeed."""
    runs = int(counter.read_text() or "0") if counter.exists() else 0
    counter.write_text(str(runs + 1))
    if runs < failures:
        raise ValueError(f"the initializer failed (run {runs + 1})")


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


class QuotaError(Exception):
    """An __init__ that takes more than the message it passes on: pickling calls
    ``QuotaError(message)``, which fails."""

    def __init__(self, message: str, user: str, used: int) -> None:
        super().__init__(message)
        self.user = user
        self.used = used


def _quota_error(user: str, used: int) -> QuotaError:
    error = QuotaError(f"{user} is over quota", user, used)
    error.__notes__ = [f"{used} units used"]  # error.add_note(...), which Python 3.10 lacks
    return error


def raise_quota_error(user: str, used: int) -> None:
    raise _quota_error(user, used)


def raise_quota_error_for_negative(x: int) -> int:
    if x < 0:
        raise _quota_error("item", x)
    return x * x


def yield_then_raise_quota_error(user: str, used: int) -> Iterator[int]:
    yield 1
    raise _quota_error(user, used)


def channel_raise_quota_error(end: Any, user: str, used: int) -> None:
    end.recv()
    raise _quota_error(user, used)


def raise_error_of_a_module_only_the_worker_has(directory: Path) -> None:
    """Raise an exception whose class the parent cannot import: its module is on the
    worker's path only."""
    (directory / "only_in_the_worker.py").write_text(
        "class WorkerOnlyError(Exception):\n    pass\n"
    )
    sys.path.insert(0, str(directory))
    try:
        import only_in_the_worker
    finally:
        sys.path.remove(str(directory))
    raise only_in_the_worker.WorkerOnlyError("from a module the parent lacks")


class ExitsWhenUnpickled:
    """Pickles fine; unpickling it calls ``sys.exit(3)``."""

    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, (3,))


def return_exits_when_unpickled() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def exits_when_unpickled_for_negative(x: int) -> object:
    return ExitsWhenUnpickled() if x < 0 else x * x


def yield_exits_when_unpickled_between(before: object, after: object) -> Iterator[object]:
    yield before
    yield ExitsWhenUnpickled()
    yield after


class FailsToUnpickle:
    """Pickles fine in the parent; unpickling it raises ValueError (``int("not a number")``),
    or with ``exits``, SystemExit."""

    def __init__(self, exits: bool = False) -> None:
        self.exits = exits

    def __reduce__(self) -> tuple[object, ...]:
        if self.exits:
            return (sys.exit, (4,))
        return (int, ("not a number",))


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


# --- channels and queues ---------------------------------------------------------------------
#
# Channel functions (pool.open_channel) take the worker's end of the channel first; each sync
# one that has an ``async_`` twin behaves the same on an AsyncChannelEnd. Queue functions take
# the worker's handle of an anypool.Queue.


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _type_name(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def channel_echo_with(end: Any, extra: object) -> str:
    """As :func:`channel_echo`, with an argument of the caller's."""
    return channel_echo(end)


def channel_echo(end: Any) -> str:
    """Send back each item until the parent sends EOF; return the type of ``end``."""
    for item in end:
        end.send(item)
    return _type_name(end)


async def async_channel_echo(end: Any) -> str:
    """As channel_echo; return the type of ``end`` and the event loop library it runs on."""
    async for item in end:
        await end.send(item)
    return f"{_type_name(end)} on {_event_loop_library()}"


def channel_send_items(end: Any, items: list[object], value: object) -> object:
    for item in items:
        end.send(item)
    return value


async def async_channel_send_items(end: Any, items: list[object], value: object) -> object:
    for item in items:
        await end.send(item)
    return value


def channel_send_items_then_raise(end: Any, items: list[object], message: str) -> None:
    for item in items:
        end.send(item)
    raise ValueError(message)


async def async_channel_send_items_then_raise(end: Any, items: list[object], message: str) -> None:
    for item in items:
        await end.send(item)
    raise ValueError(message)


def channel_send_items_then_exit(end: Any, items: list[object], code: int) -> None:
    for item in items:
        end.send(item)
    os._exit(code)


def channel_send_items_then_exit_with_an_item_unread(
    end: Any, items: list[object], go: str, code: int
) -> None:
    """Send our pid; once the file ``go`` exists, send ``items`` and exit without reading what
    the parent sent meanwhile (the kernel then resets the parent's end: POLLERR)."""
    end.send(os.getpid())
    while not os.path.exists(go):  # not end.poll(): that would read the parent's item
        time.sleep(0.005)
    for item in items:
        end.send(item)
    os._exit(code)


async def async_channel_send_items_then_exit(end: Any, items: list[object], code: int) -> None:
    for item in items:
        await end.send(item)
    os._exit(code)


def channel_recv_iterate_recv(end: Any) -> tuple[object, list[object], str]:
    """Take one item with recv(), the rest with a for loop, then recv() again: the first item,
    the rest, and the name of what the last recv() raised."""
    first = end.recv()
    rest = list(end)
    try:
        end.recv()
    except EOFError as error:
        return first, rest, type(error).__name__
    return first, rest, "nothing"


async def async_channel_recv_iterate_recv(end: Any) -> tuple[object, list[object], str]:
    first = await end.recv()
    rest = [item async for item in end]
    try:
        await end.recv()
    except EOFError as error:
        return first, rest, type(error).__name__
    return first, rest, "nothing"


def channel_recv_one_then_raise(end: Any, message: str) -> None:
    end.recv()
    raise ValueError(message)


def channel_raise(end: Any, message: str) -> None:
    raise ValueError(message)


def channel_return(end: Any, value: object) -> object:
    return value


def channel_note_close(end: Any, pid_path: Path, note: Path) -> int:
    """Write the pid, recv until the parent closes, then try to send: ``note`` gets what recv
    and send raised."""
    write_pid(pid_path)
    events = []
    try:
        while True:
            end.recv()
    except EOFError:
        events.append("EOFError")
    try:
        end.send("after the close")
    except BrokenPipeError:
        events.append("BrokenPipeError")
    _write_atomically(note, " ".join(events))
    return os.getpid()


async def async_channel_note_close(end: Any, pid_path: Path, note: Path) -> int:
    write_pid(pid_path)
    events = []
    try:
        while True:
            await end.recv()
    except EOFError:
        events.append("EOFError")
    try:
        await end.send("after the close")
    except BrokenPipeError:
        events.append("BrokenPipeError")
    _write_atomically(note, " ".join(events))
    return os.getpid()


def channel_write_pid_and_sleep(end: Any, pid_path: Path, seconds: float) -> None:
    """Neither recv nor send: only a kill ends it early."""
    write_pid(pid_path)
    time.sleep(seconds)


def channel_ignore_sigterm_and_sleep(end: Any, pid_path: Path, seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write_pid(pid_path)
    time.sleep(seconds)


def channel_send_forever_logging(end: Any, log: Path) -> None:
    """Send 0, 1, 2, ... forever, appending a line to ``log`` after each send returns; once a
    send raises BrokenPipeError, log its name and return."""
    for item in itertools.count():
        try:
            end.send(item)
        except BrokenPipeError as error:
            _note_produced(log, type(error).__name__)
            return
        _note_produced(log, item)


async def async_channel_send_forever_logging(end: Any, log: Path) -> None:
    for item in itertools.count():
        try:
            await end.send(item)
        except BrokenPipeError as error:
            _note_produced(log, type(error).__name__)
            return
        _note_produced(log, item)


def _summarize_big_item(item: bytes) -> tuple[int, int, bool]:
    """Its length, its first byte, and whether every byte equals the first."""
    return len(item), item[0], item == item[:1] * len(item)


def channel_exchange_big_items(end: Any, count: int, size: int) -> list[tuple[int, int, bool]]:
    """Send ``count`` items of ``size`` bytes (item i made of byte i) before receiving any,
    then receive ``count`` items: while both sides write big items at once."""
    for index in range(count):
        end.send(bytes([index]) * size)
    return [_summarize_big_item(end.recv()) for _ in range(count)]


async def async_channel_exchange_big_items(
    end: Any, count: int, size: int
) -> list[tuple[int, int, bool]]:
    for index in range(count):
        await end.send(bytes([index]) * size)
    return [_summarize_big_item(await end.recv()) for _ in range(count)]


def channel_poll_then_recv(end: Any) -> tuple[list[object], float]:
    """What poll() says before the parent sends and after, and how long poll(0.1) waited."""
    answers: list[object] = [end.poll()]
    started = time.monotonic()
    answers.append(end.poll(0.1))
    waited = time.monotonic() - started
    end.send("polling")
    answers.append(end.poll(timeout=20.0))
    answers.append(end.recv())
    # After the parent's send_eof, recv would raise at once: poll says so without waiting.
    answers.append(end.poll(timeout=20.0))
    return answers, waited


async def _run_with_ticker(body: Any, marker: Path) -> tuple[int, int, object]:
    """Run ``body()`` while a ticker task counts ticks every 10 ms on the same event loop and
    touches ``marker`` at the third; the ticks when ``body`` started and ended, its result."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await _sleep(POLL_INTERVAL)
            ticks += 1
            if ticks == 3:
                marker.touch()

    async def timed_body() -> tuple[int, int, object]:
        before = ticks
        result = await body()
        return before, ticks, result

    if _event_loop_library() == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            outcome = await timed_body()
            nursery.cancel_scope.cancel()
        return outcome
    import asyncio

    task = asyncio.create_task(ticker())
    try:
        return await timed_body()
    finally:
        task.cancel()


async def async_channel_tick_while_receiving(
    end: Any, marker: Path
) -> tuple[str, int, int, object]:
    """Await recv() while a ticker runs; the parent sends only once the ticker ticked 3 times."""
    before, after, item = await _run_with_ticker(end.recv, marker)
    return _event_loop_library(), before, after, item


async def async_channel_tick_while_sending(end: Any, marker: Path) -> tuple[str, int, int, object]:
    """With buffer=1: the second send waits for the parent, which receives only once the
    ticker ticked 3 times."""
    await end.send("first")

    async def send_second() -> str:
        await end.send("second")
        return "sent"

    before, after, outcome = await _run_with_ticker(send_second, marker)
    return _event_loop_library(), before, after, outcome


def channel_items_to_queue(end: Any, q: Any) -> str:
    for item in end:
        q.put(item)
    return "done"


def queue_put_items(q: Any, items: list[object]) -> int:
    for item in items:
        q.put(item)
    return len(items)


def queue_put_items_noting_progress(
    q: Any, items: list[object], pid_path: Path, progress: Path
) -> int:
    """Put ``items`` one by one, writing to ``progress`` how many puts returned so far."""
    write_pid(pid_path)
    for count, item in enumerate(items, 1):
        q.put(item)
        _write_atomically(progress, str(count))
    return os.getpid()


def queue_get_noting(q: Any, pid_path: Path, note: Path) -> object:
    """Get one item (waiting for it) and write its repr to ``note``."""
    write_pid(pid_path)
    item = q.get()
    _write_atomically(note, repr(item))
    return item


def queue_iterate(q: Any) -> list[object]:
    return list(q)


def queue_get_until_eof(q: Any) -> tuple[list[object], str]:
    items = []
    while True:
        try:
            items.append(q.get())
        except EOFError as error:
            return items, type(error).__name__


def queue_put(q: Any, item: object) -> None:
    q.put(item)


def queue_put_nowait(q: Any, item: object) -> None:
    q.put_nowait(item)


def queue_get_nowait(q: Any) -> object:
    return q.get_nowait()


def queue_get(q: Any) -> object:
    return q.get()


def queue_put_with_timeout(q: Any, item: object, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    try:
        q.put(item, timeout=timeout)
    except Exception as error:
        return type(error).__name__, time.monotonic() - started
    return "put", time.monotonic() - started


def queue_get_with_timeout(q: Any, timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    try:
        item = q.get(timeout=timeout)
    except Exception as error:
        return type(error).__name__, time.monotonic() - started
    return repr(item), time.monotonic() - started


def queue_put_a_lock(q: Any) -> None:
    q.put(threading.Lock())


def queue_pickle_handle(q: Any) -> bytes:
    import pickle

    return pickle.dumps(q)


def queue_use_from_another_thread(q: Any) -> list[str]:
    """What put and get raise when called from a thread the worker started."""
    errors: list[str] = []

    def use() -> None:
        for operation in (lambda: q.put(1), q.get):
            try:
                operation()
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
            else:
                errors.append("no error")

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    return errors


def queue_put_side_result(q: Any, item: int) -> int:
    """For pool.map with functools.partial: put ``item * 10`` aside, return ``item * item``."""
    q.put(item * 10)
    return item * item


def queue_yield_and_put(q: Any, count: int) -> Iterator[int]:
    for item in range(count):
        q.put(item * 10)
        yield item


def queue_yield_doubled(q: Any) -> Iterator[object]:
    for item in q:
        yield item * 2


# --- faults (issue 4) ---
#
# A fault is named by a string, so that one parametrized test covers pool.run, pool.map and
# pool.stream: "exit" (os._exit(FAULT_EXIT_CODE)), "sigkill" (the worker waits for the test to
# SIGKILL it), "segfault", "memory" (MemoryError under a lowered RLIMIT_AS; the worker survives),
# "recursion" (RecursionError; the worker survives).

FAULT_EXIT_CODE = 3
_MIB = 1 << 20


def _wait_to_be_killed(seconds: float = 30.0) -> None:
    """Sleep until killed; raise if nobody kills this worker within ``seconds``."""
    time.sleep(seconds)
    raise TimeoutError(f"nobody killed worker {os.getpid()} within {seconds} s")


def _virtual_memory_size() -> int:
    """The bytes of address space this process maps now (VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def exhaust_address_space() -> None:
    """Lower RLIMIT_AS to 64 MiB above what this process maps, allocate 1 GiB (MemoryError),
    and restore the limit before the error leaves."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _virtual_memory_size() + 64 * _MIB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        bytearray(1 << 30)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def recurse_forever(depth: int = 0) -> int:
    return recurse_forever(depth + 1) + 1


def meet_fault(fault: str, pid_path: Path) -> None:
    """Write this worker's pid to ``pid_path``, then meet ``fault``."""
    write_pid(pid_path)
    if fault == "exit":
        os._exit(FAULT_EXIT_CODE)
    elif fault == "sigkill":
        _wait_to_be_killed()
    elif fault == "segfault":
        crash_with_segfault()
    elif fault == "memory":
        exhaust_address_space()
    elif fault == "recursion":
        recurse_forever()
    raise AssertionError(f"fault {fault!r} did not happen")


def yield_then_meet_fault(items: list[object], fault: str, pid_path: Path) -> Iterator[object]:
    yield from items
    meet_fault(fault, pid_path)
    yield "after the fault"


async def async_yield_then_meet_fault(
    items: list[object], fault: str, pid_path: Path
) -> AsyncIterator[object]:
    for item in items:
        await _sleep(0)
        yield item
    meet_fault(fault, pid_path)
    yield "after the fault"


def resist_sigterm(how: str, marker: Path) -> None:
    """Handle SIGTERM by touching ``marker``, then returning ("swallow": what ran goes on) or
    looping in the handler for good ("loop")."""

    def handler(signum: int, frame: object) -> None:
        marker.touch()
        while how == "loop":
            time.sleep(POLL_INTERVAL)

    signal.signal(signal.SIGTERM, handler)


def resist_sigterm_and_wait(how: str, pid_path: Path, marker: Path) -> None:
    resist_sigterm(how, marker)
    write_pid(pid_path)
    _wait_to_be_killed()


def yield_pid_resisting_sigterm(how: str, marker: Path, busy: Path) -> Iterator[int]:
    """Yield this worker's pid once, then touch ``busy`` and wait (not at a yield) until
    killed. (Closed before it touches ``busy``, it ends at the yield.)"""
    resist_sigterm(how, marker)
    yield os.getpid()
    busy.touch()
    _wait_to_be_killed()


def yield_pid_ignoring_generator_exit(marker: Path, then: str) -> Iterator[int]:
    """Yield this worker's pid forever. GeneratorExit is caught and noted in ``marker``; then
    the generator yields again ("yield") or sleeps until killed ("sleep")."""
    while True:
        try:
            yield os.getpid()
        except GeneratorExit:
            marker.touch()
            if then == "sleep":
                _wait_to_be_killed()


async def async_yield_pid_ignoring_generator_exit(marker: Path, then: str) -> AsyncIterator[int]:
    while True:
        try:
            yield os.getpid()
        except GeneratorExit:
            marker.touch()
            if then == "sleep":
                await _sleep(30)
                raise TimeoutError(f"nobody killed worker {os.getpid()} within 30 s") from None


# --- bad input, load, soak (issue 4) ---
#
# Values that cannot make the trip between parent and worker, named by a string so that one
# test shape covers pool.run, pool.map and pool.stream: see ``misbehave``.


def _rebuild_bottomless(inner: object) -> object:
    return inner


class BottomlessPickle:
    """Pickling it never ends: each ``__reduce__`` asks the pickler to pickle a new
    BottomlessPickle, until the pickler gives up (RecursionError)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_bottomless, (BottomlessPickle(),))


class BottomlessError(Exception):
    """An exception whose pickling never ends: it holds a BottomlessPickle."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.payload = BottomlessPickle()


class ExitingReduceError(Exception):
    """An exception whose ``__reduce__`` raises SystemExit (a BaseException, not an Exception)."""

    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit("ExitingReduceError refuses to be pickled")


def huge_message(size: int) -> str:
    """A message of ``size`` characters that says what it is."""
    return "huge message " + "x" * (size - 13)


def misbehave(what: str) -> object:
    """Return or raise what ``what`` names:

    - ``"lock"``: return a threading.Lock (pickle refuses it);
    - ``"bottomless"``: return a BottomlessPickle;
    - ``"zeros:N"``: return N zero bytes;
    - ``"unreducible"``: raise UnreducibleError (its ``__reduce__`` raises TypeError);
    - ``"exiting-reduce"``: raise ExitingReduceError (its ``__reduce__`` raises SystemExit);
    - ``"bottomless-error"``: raise BottomlessError;
    - ``"huge-error:N"``: raise ValueError(huge_message(N)).
    """
    kind, _, size = what.partition(":")
    if kind == "lock":
        return threading.Lock()
    if kind == "bottomless":
        return BottomlessPickle()
    if kind == "zeros":
        return bytes(int(size))
    if kind == "unreducible":
        raise UnreducibleError(f"{what} refuses pickling")
    if kind == "exiting-reduce":
        raise ExitingReduceError(f"{what} refuses pickling")
    if kind == "bottomless-error":
        raise BottomlessError(f"{what} cannot be pickled")
    if kind == "huge-error":
        raise ValueError(huge_message(int(size)))
    raise AssertionError(f"unknown misbehaviour {what!r}")


def value_or_misbehave(item: object) -> object:
    """For pool.map: an int item is returned as it is; a string item is passed to misbehave."""
    if isinstance(item, str):
        return misbehave(item)
    return item


def yield_then_misbehave(before: object, what: str, after: object) -> Iterator[object]:
    """Yield ``before``, then ``misbehave(what)`` (or raise what it raises), then ``after``."""
    yield before
    yield misbehave(what)
    yield after


async def async_yield_then_misbehave(
    before: object, what: str, after: object
) -> AsyncIterator[object]:
    yield before
    await _sleep(0)
    yield misbehave(what)
    yield after


def wait_for_path_then_return(path: str, value: object) -> object:
    """Block until ``path`` exists (30 s at most), then return ``value``."""
    wait_for_path(Path(path), 30.0)
    return value


# --- mixed fault fuzz (issue 4) --------------------------------------------------------------


def work(value: int, seconds: float, die: bool) -> int:
    """Return ``value`` after ``seconds``, or kill the worker first if ``die``."""
    time.sleep(seconds)
    if die:
        os._exit(9)
    return value


def work_on_item(item: tuple[int, float, bool]) -> int:
    return work(*item)


def work_stream(count: int, seconds: float, die_at: int | None) -> Iterator[int]:
    for index in range(count):
        time.sleep(seconds)
        if index == die_at:
            os._exit(9)
        yield index


def append_pid_and_ticks(path: Path, seconds: float) -> None:
    """Write this worker's pid to ``path``, then append a line to ``path.with_suffix('.ticks')``
    every 10 ms for ``seconds``: the file stops growing when the call stops."""
    write_pid(path)
    ticks = path.with_suffix(".ticks")
    deadline = time.monotonic() + seconds
    with ticks.open("a") as file:
        while time.monotonic() < deadline:
            file.write("tick\n")
            file.flush()
            time.sleep(0.01)
