"""The loop each worker process runs: receive a call, run it, send back its outcome."""

from __future__ import annotations

import os
import select
import signal
import traceback
import types
from multiprocessing.connection import Connection
from typing import Any

from .. import _protocol as protocol
from .._errors import SerializationError
from .._serialize import describe, dumps, loads
from .lifeline import die_with_parent

__all__ = ["main"]

_READ_SIZE = 256 * 1024


class _Pipe:
    """Blocking, framed messages over the worker's end of its pipe."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def wait(self, timeout: float | None) -> bool:
        """Whether a message (or end-of-file) arrived within ``timeout`` seconds."""
        if self._buffer or timeout is None:
            return True
        return bool(self._poller.poll(timeout * 1000))

    def receive(self) -> tuple[int, bytes | bytearray] | None:
        """The next message, or ``None`` at end-of-file."""
        header = self._receive_exactly(protocol.HEADER.size)
        if header is None:
            return None
        kind, size = protocol.HEADER.unpack(header)
        payload = self._receive_exactly(size)
        if payload is None:
            return None
        return kind, payload

    def _receive_exactly(self, size: int) -> bytes | bytearray | None:
        buffer = self._buffer
        if len(buffer) < size and size > _READ_SIZE:
            # A large payload goes straight into its own buffer, with no intermediate copies.
            payload = bytearray(size)
            view = memoryview(payload)
            filled = len(buffer)
            view[:filled] = buffer
            buffer.clear()
            while filled < size:
                count = os.readv(self._fd, [view[filled:]])
                if count == 0:
                    return None
                filled += count
            return payload
        while len(buffer) < size:
            chunk = os.read(self._fd, _READ_SIZE)
            if not chunk:
                return None
            buffer += chunk
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def send(self, kind: int, payload: bytes) -> None:
        parts, total = protocol.encode_frame(kind, payload)
        sent = os.writev(self._fd, parts)
        while sent < total:
            # A blocking write returns early only when interrupted; resume where it stopped.
            sent += os.write(self._fd, protocol.unsent(parts, sent))


def main(connection: Connection, config_blob: bytes) -> None:
    """Serve calls from the parent until it closes the pipe or ``idle_timeout`` passes."""
    # Ctrl-C is for the parent: it cancels the calls, and the pool then stops its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd = connection.fileno()
    die_with_parent(fd)
    config: protocol.WorkerConfig = loads(config_blob)
    try:
        _serve(_Pipe(fd), config)
    except (BrokenPipeError, ConnectionResetError):
        # The parent closed its end without waiting for us: nobody is left to tell.
        pass


def _serve(pipe: _Pipe, config: protocol.WorkerConfig) -> None:
    if config.initializer is not None:
        try:
            config.initializer(*config.initargs)
        except BaseException as error:
            pipe.send(protocol.INIT_FAILED, _report(error))
            return
    while True:
        if not pipe.wait(config.idle_timeout):
            # Tell the parent before leaving: a call it sends from now on was never started.
            pipe.send(protocol.RETIRING, b"")
            return
        message = pipe.receive()
        if message is None:
            return
        pipe.send(*_run(message[1]))


def _run(payload: bytes | bytearray) -> tuple[int, bytes]:
    try:
        call: protocol.Call = loads(payload)
        result = call.fn(*call.args, **call.kwargs)
        if isinstance(result, types.CoroutineType):
            result = _run_coroutine(result, call.event_loop)
    except BaseException as error:
        return protocol.ERROR, _report(error)
    try:
        return protocol.RESULT, dumps(result)
    except Exception as error:
        failure = SerializationError(f"could not pickle the result of {describe(call.fn)}: {error}")
        failure.__cause__ = error
        return protocol.ERROR, _report(failure)


def _run_coroutine(coroutine: types.CoroutineType[Any, Any, Any], event_loop: str) -> Any:
    # Run it on the caller's kind of event loop, imported only when a call needs it.
    if event_loop == "trio":
        import trio

        async def await_coroutine() -> Any:
            return await coroutine

        return trio.run(await_coroutine)
    import asyncio

    return asyncio.run(coroutine)


def _report(error: BaseException) -> bytes:
    """Pickle ``error`` for the parent, with its traceback as text and a fallback by name."""
    # The first frame is this module's own; the user's traceback starts below it.
    frames = error.__traceback__.tb_next if error.__traceback__ is not None else None
    text = "".join(traceback.format_exception(type(error), error, frames))
    exception: bytes | None = None
    if isinstance(error, Exception):
        try:
            exception = dumps(error)
            # Unpickling can fail where pickling worked (an __init__ with other arguments).
            loads(exception)
        except Exception:
            exception = None
    cls = type(error)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    try:
        message = str(error)
    except Exception:
        message = "<str() of the exception failed>"
    return dumps(protocol.ErrorReport(exception, name, message, text))
