"""The loop each worker process runs: receive a call, run it, send back its outcome."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import types

from ...._serialize import Payload, dumps, loads
from ..._execution import (
    CallNotLoaded,
    call_fn,
    is_async,
    load_call,
    pickle_item,
    pickle_outcome,
    report_error,
    run_coroutine,
    run_pickled_call,
    start_generator,
)
from .. import shared_memory, wire
from .lifeline import die_with_parent
from .pipe import Pipe

# Every worker process imports this module, and the forkserver preloads it: what only some
# calls need (typing, cloudpickle, the channel ends) is imported by them, so that the others
# start without it (tests/test_architecture.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from typing import Any

    from .pipe import Frame

__all__ = ["main", "main_of_process"]


def main_of_process(connection: Connection, config_blob: bytes) -> None:
    """:func:`main` as the target of a ``multiprocessing.Process`` (the fork and spawn start
    methods), which hands it the pipe end as a ``Connection``."""
    main(connection.fileno(), config_blob)


def main(fd: int, config_blob: bytes) -> None:
    """Serve calls from the parent on the pipe end ``fd`` until the parent closes the pipe or
    ``idle_timeout`` passes."""
    # Ctrl-C is for the parent: it cancels the calls, and the pool then stops its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _forget_the_parents_event_loop()
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


def _open(pipe: Pipe, payload: bytes | bytearray) -> None:
    """Call ``fn(channel_end, *args, **kwargs)`` and send its outcome once it returns."""
    # Imported by the first channel: its generic classes import typing.
    from .duplex import AsyncChannelEnd, ChannelEnd, ChannelState, run_blocking

    channel: ChannelState | None = None
    try:
        fn, args, kwargs, event_loop, buffer = load_call(payload)
        channel = ChannelState(pipe, buffer)
        run_blocking(pipe, channel.start(buffer))
        end: AsyncChannelEnd[Any, Any] | ChannelEnd[Any, Any] = (
            AsyncChannelEnd(channel, event_loop) if is_async(fn) else ChannelEnd(channel)
        )
        outcome = pickle_outcome(fn, call_fn(fn, (end, *args), kwargs, event_loop))
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
        run_coroutine(_drive_async_generator(pipe, generator, credit), event_loop)
    else:
        _drive_generator(pipe, generator, credit)


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
