"""The loop each worker process runs: receive a call, run it, send back its outcome."""

from __future__ import annotations

import contextlib
import functools
import inspect
import signal
import sys
import time
import traceback
import types
from collections.abc import Coroutine, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ...._errors import SerializationError
from ...._serialize import ErrorReport, Payload, describe, dumps, dumps_exception, dumps_item, loads
from .. import shared_memory, wire
from .duplex import AsyncChannelEnd, ChannelEnd, ChannelState, run_blocking
from .lifeline import die_with_parent
from .pipe import Frame, Pipe
from .unpickling import unpickling_error

__all__ = ["main"]


def main(connection: Connection, config_blob: bytes) -> None:
    """Serve calls from the parent until it closes the pipe or ``idle_timeout`` passes."""
    # Ctrl-C is for the parent: it cancels the calls, and the pool then stops its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _forget_the_parents_event_loop()
    fd = connection.fileno()
    die_with_parent(fd)
    config: wire.WorkerConfig = loads(config_blob)
    shared_memory.keep_spare_files(True)
    # BrokenPipeError: the parent closed its end without waiting for us; nobody is left to tell.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        _serve(Pipe(fd, config.idle_timeout), config)


def _forget_the_parents_event_loop() -> None:
    """Under the fork start method a worker starts as a copy of its parent, in the middle of
    the parent's event loop: undo what of it would reach the worker's own loops."""
    # The parent's loop has its wake-up descriptor written to on each signal: our signals would
    # wake it, and trio.run warns of a wake-up descriptor it did not set.
    signal.set_wakeup_fd(-1)
    # Handlers that the parent's loop (or application) installed would run here, where no loop
    # calls them back: a worker starts with the defaults, as under spawn. (SIGINT: see main.)
    for signum in signal.valid_signals():
        if signum != signal.SIGINT and callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_DFL)
    # trio keeps the run in progress in a thread-local: trio.run would say that it is called
    # from inside a run. sniffio would name the parent's library (a thread-local under trio,
    # and the context variable of the task that forked us) while none, or another, runs.
    trio_run = sys.modules.get("trio._core._run")
    if trio_run is not None:
        vars(trio_run.GLOBAL_RUN_CONTEXT).clear()
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        sniffio.thread_local.name = None
        sniffio.current_async_library_cvar.set(None)


def _serve(pipe: Pipe, config: wire.WorkerConfig) -> None:
    if config.initializer is not None:
        try:
            config.initializer(*config.initargs)
        except BaseException as error:
            pipe.send(wire.INIT_FAILED, report_error(error))
            return
    message: Frame | None = None
    announced = False  # whether STARTED went out for the QUEUED call in ``message``
    drops: set[int] = set()  # QUEUED calls dropped, by number, that may not have arrived yet
    while True:
        if message is None:
            try:
                message = pipe.receive_call()
            except TimeoutError:
                # Tell the parent before leaving: a call it sends from now on was never started.
                pipe.send(wire.RETIRING, b"")
                return
            if message is None:
                return
        kind, payload = message
        if kind == wire.QUEUED and not announced:
            number = wire.COUNT.unpack_from(payload)[0]
            if _dropped(pipe, number, drops):
                pipe.send(wire.SKIPPED, wire.COUNT.pack(number))
                message = None
                continue
            pipe.send(wire.STARTED, wire.COUNT.pack(number))
        message, announced = None, False
        if kind == wire.CALL:
            pipe.send(*run_pickled_call(payload))
        elif kind == wire.QUEUED:
            outcome = run_pickled_call(payload[wire.COUNT.size :])
            # The parent has more calls than workers: the next may be waiting already.
            message, announced = _send_outcome_announcing_the_next(pipe, outcome, drops)
        elif kind == wire.STREAM:
            _stream(pipe, payload)
        elif kind == wire.OPEN:
            _open(pipe, payload)
        # Otherwise a message for a stream or a channel that had already ended as it was sent,
        # or a DROP that came after its call had started.


def _dropped(pipe: Pipe, number: int, drops: set[int]) -> bool:
    """Whether the parent dropped the QUEUED call ``number``, which is about to start; the
    drops of earlier calls are forgotten."""
    drops.update(wire.COUNT.unpack(payload)[0] for payload in pipe.take(wire.DROP))
    dropped = number in drops
    if drops:
        drops.intersection_update([later for later in drops if later > number])
    return dropped


def _send_outcome_announcing_the_next(
    pipe: Pipe, outcome: tuple[int, Payload], drops: set[int]
) -> tuple[Frame | None, bool]:
    """Send a call's outcome, and if a QUEUED call has arrived already, whether it starts
    (STARTED) or was dropped (SKIPPED) in the same write: the parent hears of both at once.
    Returns the next message if it has arrived, and whether it was announced."""
    following = pipe.ready()
    if following is None or following[0] != wire.QUEUED:
        pipe.send(*outcome)
        return following, False
    number = wire.COUNT.unpack_from(following[1])[0]
    if _dropped(pipe, number, drops):
        pipe.send(*outcome, then=(wire.SKIPPED, wire.COUNT.pack(number)))
        return None, False
    pipe.send(*outcome, then=(wire.STARTED, wire.COUNT.pack(number)))
    return following, True


class CallNotLoaded(Exception):
    """The message of a call could not be unpickled: its report is ready to send."""

    def __init__(self, report: bytes) -> None:
        self.report = report


def load_call(payload: Payload | bytearray) -> Any:
    """The tuple a CALL, QUEUED, STREAM or OPEN message holds, ``(fn, args, kwargs, ...)``.

    Raises:
        CallNotLoaded: with the report of a SerializationError that names the argument at
            fault, its ``__cause__`` the error raised while unpickling.
    """
    try:
        return loads(payload)
    # BaseException: a __reduce__ may raise anything, and must not end the worker.
    except BaseException as error:
        raise CallNotLoaded(report_error(unpickling_error(payload, error), cause=error)) from None


def run_pickled_call(payload: Payload | bytearray) -> tuple[int, Payload]:
    """Run the pickled call ``(fn, args, kwargs, event_loop)``: ``(RESULT, the pickled result)``
    or ``(ERROR, a pickled ErrorReport)``, whatever went wrong. (Ray tasks run it too.)"""
    try:
        fn, args, kwargs, event_loop = load_call(payload)
        result = _call(fn, args, kwargs, event_loop)
    except CallNotLoaded as failure:
        return wire.ERROR, failure.report
    except BaseException as error:
        return wire.ERROR, report_error(error)
    if fn is apply_to_chunk:
        return wire.RESULT, _dump_chunk_outcome(args[0], *result)
    return _outcome(fn, result)


def _outcome(fn: Any, result: Any) -> tuple[int, Payload]:
    """The RESULT message for what ``fn`` returned, or the ERROR that says why it cannot be
    pickled."""
    try:
        return wire.RESULT, dumps(result, out_of_band=True)
    # BaseException: a __reduce__ may raise anything, and must not end the worker.
    except BaseException as error:
        return wire.ERROR, _unpicklable(f"the result of {describe(fn)}", result, error)


def _dump_chunk_outcome(
    fn: Any, results: list[Any], failures: list[int], seconds: float
) -> Payload:
    """Pickle what apply_to_chunk returned; a result that cannot be pickled becomes a failure
    of its own item, named after ``fn``, and the others are delivered."""
    try:
        return dumps((results, failures, seconds), out_of_band=True)
    except BaseException:
        pass
    failed = set(failures)
    for position, result in enumerate(results):
        if position in failed:
            continue
        try:
            dumps(result)
        except BaseException as error:
            results[position] = _unpicklable(f"the result of {describe(fn)}", result, error)
            failed.add(position)
    return dumps((results, sorted(failed), seconds), out_of_band=True)


def _unpicklable(what: str, obj: Any, error: BaseException) -> bytes:
    """The ErrorReport of a SerializationError: ``what`` (``obj``) could not be pickled."""
    failure = SerializationError(f"could not pickle {what} ({describe(obj)}): {error!r}")
    failure.__cause__ = error
    return report_error(failure)


def _open(pipe: Pipe, payload: bytes | bytearray) -> None:
    """Call ``fn(channel_end, *args, **kwargs)`` and send its outcome once it returns."""
    channel: ChannelState | None = None
    try:
        fn, args, kwargs, event_loop, buffer = load_call(payload)
        channel = ChannelState(pipe, buffer)
        run_blocking(pipe, channel.start(buffer))
        end = AsyncChannelEnd(channel, event_loop) if _is_async(fn) else ChannelEnd(channel)
        outcome = _outcome(fn, _call(fn, (end, *args), kwargs, event_loop))
    except CallNotLoaded as failure:
        outcome = wire.ERROR, failure.report
    except BaseException as error:
        outcome = wire.ERROR, report_error(error)
    if channel is None:
        pipe.send(*outcome)
        return
    if channel.closed:
        # The parent closed the channel and discards the outcome (an error it caused, often).
        outcome = wire.RESULT, dumps(None)
    run_blocking(pipe, channel.write(*outcome))


def _stream(pipe: Pipe, payload: bytes | bytearray) -> None:
    """Send the items of a generator as it makes them, at most ``buffer`` ahead of the
    parent's credit, until it ends, fails, or the parent asks to close it."""
    try:
        fn, args, kwargs, event_loop, buffer = load_call(payload)
        generator = start_generator(fn, args, kwargs)
    except CallNotLoaded as failure:
        pipe.send(wire.ERROR, failure.report)
        return
    except BaseException as error:
        pipe.send(wire.ERROR, report_error(error))
        return
    credit = _Credit(pipe, buffer)
    if isinstance(generator, types.AsyncGeneratorType):
        _run_coroutine(_drive_async_generator(pipe, generator, credit), event_loop)
    else:
        _drive_generator(pipe, generator, credit)


def start_generator(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    generator = fn(*args, **kwargs)
    if not isinstance(generator, (types.GeneratorType, types.AsyncGeneratorType)):
        raise TypeError(
            f"pool.stream needs a generator function; {describe(fn)} returned {describe(generator)}"
        )
    return generator


class _Credit:
    """How many more items the parent will take; its messages are read between items."""

    # How often a generator with credit left looks for the parent's messages (a CLOSE): a
    # look is a system call, which a fast generator would otherwise make for every item.
    LOOK_EVERY = 0.001

    def __init__(self, pipe: Pipe, buffer: int) -> None:
        self._pipe = pipe
        self._available = buffer
        self._next_look = 0.0

    def take(self) -> bool:
        """Wait until one more item may be made and count it; ``False``: close instead."""
        while self._available == 0 or (self._look() and self._pipe.pending()):
            try:
                message = self._pipe.receive()
            except TimeoutError:  # the idle timeout; a stream waiting for its consumer is busy
                continue
            if message is None or message[0] == wire.CLOSE:
                return False
            self._available += wire.COUNT.unpack(message[1])[0]
        self._available -= 1
        return True

    def _look(self) -> bool:
        now = time.monotonic()
        if now < self._next_look:
            return False
        self._next_look = now + self.LOOK_EVERY
        return True


def _drive_generator(pipe: Pipe, generator: Any, credit: _Credit) -> None:
    while credit.take():
        try:
            item = next(generator)
        except StopIteration:
            pipe.send(wire.RESULT, dumps(None))
            return
        except BaseException as error:
            pipe.send(wire.ERROR, report_error(error))
            return
        kind, data = pickle_item(item, generator)
        if kind == wire.ERROR:
            # Close the generator before reporting: the error is the stream's last message.
            with contextlib.suppress(Exception):
                generator.close()
        pipe.send(kind, data)
        if kind == wire.ERROR:
            return
    # GeneratorExit reaches the generator; if it hangs there, the parent kills us.
    with contextlib.suppress(Exception):
        generator.close()
    pipe.send(wire.RESULT, dumps(None))


async def _drive_async_generator(pipe: Pipe, generator: Any, credit: _Credit) -> None:
    while credit.take():
        try:
            item = await generator.__anext__()
        except StopAsyncIteration:
            pipe.send(wire.RESULT, dumps(None))
            return
        except BaseException as error:
            pipe.send(wire.ERROR, report_error(error))
            return
        kind, data = pickle_item(item, generator)
        if kind == wire.ERROR:
            with contextlib.suppress(Exception):
                await generator.aclose()
        pipe.send(kind, data)
        if kind == wire.ERROR:
            return
    with contextlib.suppress(Exception):
        await generator.aclose()
    pipe.send(wire.RESULT, dumps(None))


def pickle_item(item: Any, generator: Any) -> tuple[int, Payload]:
    """The ITEM message for ``item``, or the ERROR that says why it cannot be pickled."""
    try:
        return wire.ITEM, dumps_item(item, f"yielded by {generator.__qualname__}", out_of_band=True)
    except SerializationError as error:
        return wire.ERROR, report_error(error)
    except BaseException as error:  # from a __reduce__: it must not end the worker
        return wire.ERROR, _unpicklable(f"an item yielded by {generator.__qualname__}", item, error)


def _call(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], event_loop: str) -> Any:
    result = fn(*args, **kwargs)
    if isinstance(result, types.CoroutineType):
        result = _run_coroutine(result, event_loop)
    return result


def apply_to_chunk(
    fn: Any, items: Sequence[Any], event_loop: str, stop_at_error: bool
) -> tuple[list[Any], list[int], float]:
    """Call ``fn(item)`` for each item: the results, the positions among them of the items that
    raised (their result is a pickled ErrorReport), and the seconds it took (for sizing the next
    chunk)."""
    started = time.perf_counter()
    results: list[Any] = []
    failures: list[int] = []
    call = functools.partial(_call_async, fn, event_loop) if _is_async(fn) else fn
    position = 0
    while position < len(items):
        try:
            # The loop that matters for tiny functions, in C: list.extend keeps the results
            # before an item that raised, so the length says which one it was.
            results.extend(map(call, items[position:] if position else items))
        except BaseException as error:
            failures.append(len(results))
            results.append(report_error(error))
            if stop_at_error:
                break
        position = len(results)
    return results, failures, time.perf_counter() - started


def _call_async(fn: Any, event_loop: str, item: Any) -> Any:
    return _call(fn, (item,), {}, event_loop)


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine to run (an ``async def``, or an object whose
    ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _run_coroutine(coroutine: Coroutine[Any, Any, Any], event_loop: str) -> Any:
    # Run it on the caller's kind of event loop, imported only when a call needs it.
    if event_loop == "trio":
        import trio

        async def await_coroutine() -> Any:
            return await coroutine

        return trio.run(await_coroutine)
    import asyncio

    return asyncio.run(coroutine)


def report_error(error: BaseException, cause: BaseException | None = None) -> bytes:
    """Pickle ``error`` for the parent, with its traceback as text and a fallback by name;
    and ``cause``, reported likewise, to be its ``__cause__`` there (else the traceback is)."""
    # The first frames are this module's own; the user's traceback starts below them.
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next
    text = "".join(traceback.format_exception(type(error), error, frames))
    exception = dumps_exception(error) if isinstance(error, Exception) else None
    cls = type(error)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    try:
        message = str(error)
    except BaseException:
        message = "<str() of the exception failed>"
    reported_cause = None if cause is None else report_error(cause)
    return dumps(ErrorReport(exception, name, message, text, reported_cause))
