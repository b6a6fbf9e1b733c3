"""``pool.open_channel``: a function running in a worker, and a two-way channel to it."""

from __future__ import annotations

import contextlib
import signal
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import anyio.abc

from ._errors import BrokenWorkerError, PoolClosedError, SerializationError
from ._eventloop import current_library, spawn_detached
from ._serialize import Payload, describe, dumps_call_arguments, dumps_item, load_error, load_result
from .backends.local import wire as protocol
from .backends.local.transport import ChannelClosed

if TYPE_CHECKING:
    from ._pool import CallOptions, _PoolCore
    from .backends.local.handle import WorkerHandle

__all__ = ["Channel"]


class Channel(anyio.abc.ObjectStream[Any]):
    """The parent's end of a channel to a function running in a worker, from
    :meth:`Pool.open_channel`: an anyio object stream.

    ``await send(item)`` waits while the function has ``buffer`` items it did not ``recv`` yet;
    ``await receive()`` (or ``async for``) returns what the function sends, and signals the end
    (``anyio.EndOfStream``) once the function returned, or raises what it raised.
    :meth:`send_eof` ends the function's ``recv`` loop; :meth:`result` waits for its return value.

    Any task may use the channel; receiving, sending and closing are safe from several at once.
    """

    def __init__(
        self,
        core: _PoolCore,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._core = core
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._buffer = options.buffer
        self._worker: WorkerHandle | None = None
        self._payload: Payload = b""
        # The function's items that were read and not received yet: at most ``buffer``.
        self._inbox: deque[Payload | bytearray] = deque()
        self._credit = 0  # items we may send; the function grants them once it started
        self._taken = 0  # items received that the function was not told of
        self._ack_batch = max(1, self._buffer // 2)
        # Set and replaced each time the reader task made progress.
        self._progress: anyio.Event | None = None
        self._eof_sent = False
        self._closing = False  # aclose() or a kill began: the function's outcome is dropped
        self._killing = False
        self._broken = False
        # Sends under way; a worker is given back to the pool only once none is left.
        self._writing = 0
        self._release_pending = False
        self._ended = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._error_seen = False

    # --- the stream ----------------------------------------------------------------------------

    async def send(self, item: Any) -> None:
        """Send ``item`` to the function, waiting while it has ``buffer`` items to take.

        Raises:
            anyio.ClosedResourceError: this side was closed (:meth:`send_eof`, :meth:`aclose`).
            anyio.BrokenResourceError: the function returned; it takes no more items.
            Exception: what the function raised, if it raised.
            BrokenWorkerError: the worker died.
            SerializationError: ``item`` cannot be pickled.
        """
        self._check_entered()
        if self._eof_sent:
            raise anyio.ClosedResourceError
        if self._ended or self._closing:
            self._raise_end(receiving=False)
        payload = dumps_item(item, f"sent on the channel to {describe(self._fn)}", out_of_band=True)
        await self._wait_until(lambda: self._credit > 0)
        if self._ended or self._closing:
            self._raise_end(receiving=False)
        self._credit -= 1
        try:
            await self._write(protocol.ITEM, payload)
        except BaseException:
            self._credit += 1
            raise

    async def receive(self) -> Any:
        """The next item the function sent, waiting for it.

        Raises:
            anyio.EndOfStream: the function returned (its value: :meth:`result`).
            Exception: what the function raised, after the items it sent before.
            BrokenWorkerError: the worker died.
            anyio.ClosedResourceError: this side was closed (:meth:`aclose`).
        """
        self._check_entered()
        if self._taken >= self._ack_batch and not (self._ended or self._closing):
            await self._acknowledge()
        await self._wait_until(lambda: self._inbox)
        if self._closing or not self._inbox:
            self._raise_end(receiving=True)
        self._taken += 1
        return load_result(self._inbox.popleft(), self._fn)

    async def send_eof(self) -> None:
        """Tell the function that nothing more will be sent: its ``recv`` raises ``EOFError``
        and its iteration ends, once it took what was sent before. Idempotent."""
        self._check_entered()
        if not (self._eof_sent or self._ended or self._closing):
            await self._write(protocol.EOF, b"")
            self._eof_sent = True

    async def result(self) -> Any:
        """Wait for the function to return, and return what it returned. Items it sends
        meanwhile that were not received are dropped.

        Raises:
            Exception: what the function raised.
            BrokenWorkerError: the worker died.
            anyio.ClosedResourceError: the channel was closed first.
        """
        self._check_entered()
        while not self._ended:
            await self._wait_until(lambda: self._inbox)
            if self._inbox and not self._ended:
                self._taken += len(self._inbox)
                self._inbox.clear()
                await self._acknowledge()
        self._inbox.clear()
        if self._closing or self._broken or self._error is not None:
            self._raise_end(receiving=False)
        return self._value

    async def aclose(self) -> None:
        """Close the channel: the function's ``recv`` raises ``EOFError`` and its ``send``
        ``BrokenPipeError``. If it has not returned within ``kill_grace`` seconds, its worker is
        killed. Items not received are dropped. Idempotent; shielded from cancellation."""
        if self._worker is None or self._closing:
            self._closing = True
            return
        self._closing = True
        self._inbox.clear()
        with anyio.CancelScope(shield=True):
            if not self._ended:
                with anyio.move_on_after(self._core.kill_grace):
                    # Refused when the worker is gone, or was killed: its end comes all the same.
                    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                        await self._write(protocol.CLOSE, b"")
                    await self._wait_until(lambda: False)
                # It had kill_grace to return after the close: no second grace for SIGTERM.
                await self._kill(at_once=True)

    async def __aenter__(self) -> Channel:
        """Start the function in a worker."""
        if self._progress is not None:
            raise RuntimeError("this channel was already opened")
        core = self._core
        core.check_open()
        self._progress = anyio.Event()
        call = (self._fn, self._args, self._kwargs, current_library(), self._buffer)
        self._payload = dumps_call_arguments(call, self._fn, self._args, self._kwargs)
        self._worker = await core.open_session(protocol.OPEN, self._payload)
        spawn_detached(self._read)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Leaving with an exception (a cancellation too) kills the worker, as for
        :meth:`Pool.run`; leaving normally is :meth:`aclose`, then raises the function's
        exception if it raised one that nobody received."""
        if exc_type is not None:
            with anyio.CancelScope(shield=True):
                self._closing = True
                await self._kill()
            return
        await self.aclose()
        if self._error is not None and not self._error_seen:
            self._error_seen = True
            raise self._error

    def __repr__(self) -> str:
        state = "ended" if self._ended else "closed" if self._closing else "open"
        return f"<anypool.Channel to {describe(self._fn)} {state}>"

    # --- the worker's messages -----------------------------------------------------------------

    async def _wait_until(self, ready: Callable[[], object]) -> None:
        """Wait until ``ready()`` or the function's end, as the reader makes progress."""
        while not (ready() or self._ended):
            assert self._progress is not None
            await self._progress.wait()

    async def _read(self) -> None:
        """Read the worker's messages until the function ends. Runs in a task of its own for
        as long as the channel is open: the worker's queue requests are answered even while
        nobody uses the channel."""
        try:
            while not self._ended:
                await self._read_one()
                progress, self._progress = self._progress, anyio.Event()
                assert progress is not None
                progress.set()
        except BaseException:
            # The event loop is ending under an open channel: nobody will wait for it.
            with anyio.CancelScope(shield=True):
                self._killing = self._closing = True
                worker = self._worker
                assert worker is not None
                if not self._ended:
                    await self._core.stop_busy(worker, terminate=True)
                    self._end()
        finally:
            progress, self._progress = self._progress, anyio.Event()
            assert progress is not None
            progress.set()

    async def _read_one(self) -> None:
        worker = self._worker
        assert worker is not None
        try:
            kind, body = await worker.receive()
        except ChannelClosed:
            with anyio.CancelScope(shield=True):
                await self._worker_gone(worker)
            return
        if kind == protocol.ITEM:
            if not self._closing:
                self._inbox.append(body)
        elif kind == protocol.CREDIT:
            self._credit += protocol.COUNT.unpack(body)[0]
        elif kind == protocol.RETIRING:
            with anyio.CancelScope(shield=True):
                await self._restart(worker)
        elif kind == protocol.INIT_FAILED:
            self._end(error=await self._core.initializer_failed(worker, body))
        else:
            if self._killing:
                # Too late: it is being killed.
                with anyio.CancelScope(shield=True):
                    await self._core.stop_busy(worker, terminate=True)
            elif self._writing:
                # A send of ours is under way: the next call must not get its message.
                self._release_pending = True
            else:
                self._release(worker)
            if kind == protocol.ERROR:
                self._end(error=load_error(body))
            else:
                try:
                    self._end(value=load_result(body, self._fn))
                except SerializationError as error:
                    self._end(error=error)

    async def _restart(self, worker: WorkerHandle) -> None:
        """The worker retired before it read the OPEN: start the function on another one.
        (Nothing but OPEN, EOF and CLOSE is sent before the function starts.)"""
        self._worker = worker = await self._core.replace_retired(worker)
        await worker.channel.send(protocol.OPEN, self._payload)
        if self._eof_sent:
            await worker.channel.send(protocol.EOF, b"")
        if self._closing:
            await worker.channel.send(protocol.CLOSE, b"")

    async def _worker_gone(self, worker: WorkerHandle) -> None:
        exitcode = await self._core.stop_busy(worker, terminate=False)
        if self._killing:
            self._end()
        elif self._core.terminated:
            self._end(
                error=PoolClosedError(
                    f"the pool was terminated during the channel to {describe(self._fn)}"
                )
            )
        else:
            self._end(
                error=BrokenWorkerError(
                    worker.pid,
                    exitcode,
                    f"the channel to {describe(self._fn)}",
                    first_call=worker.calls == 0,
                )
            )

    def _end(self, *, value: Any = None, error: BaseException | None = None) -> None:
        # After the parent closed the channel, the function reports only errors of its own:
        # keep them, to raise where the channel's block ends.
        self._ended = True
        self._value, self._error = value, error
        self._core.end_session(failed=None if self._killing else error is not None)

    # --- helpers -------------------------------------------------------------------------------

    async def _acknowledge(self) -> None:
        """Tell the function of the items taken, so that it may send as many more."""
        # Counted out before the write: another task receiving meanwhile must not send them too.
        count, self._taken = self._taken, 0
        try:
            await self._write(protocol.CREDIT, protocol.COUNT.pack(count))
        except BaseException:
            self._taken += count
            raise

    def _release(self, worker: WorkerHandle) -> None:
        worker.calls += 1
        self._core.release(worker)

    async def _write(self, kind: int, payload: Payload) -> None:
        worker = self._worker
        assert worker is not None
        self._writing += 1
        try:
            await worker.channel.send(kind, payload)
        except ChannelClosed:
            if worker.channel.cut_short:
                self._broken = True
                with anyio.CancelScope(shield=True):
                    await self._kill()
                raise anyio.BrokenResourceError(
                    "the channel broke: a send was cancelled part-way through a message"
                ) from None
            # The worker is gone: its end says why.
            with anyio.CancelScope(shield=True):
                await self._wait_until(lambda: False)
            self._raise_end(receiving=False)
        except BaseException:
            if worker.channel.cut_short:
                # What follows a partial message cannot be read: the channel is over.
                self._broken = True
                with anyio.CancelScope(shield=True):
                    await self._kill()
            raise
        finally:
            self._writing -= 1
            if self._release_pending and not self._writing:
                self._release_pending = False
                self._release(worker)

    async def _kill(self, *, at_once: bool = False) -> None:
        """Kill the worker unless the function ended: SIGTERM, then SIGKILL after
        ``kill_grace`` (SIGKILL at once if ``at_once``); return once it is reaped."""
        if self._ended:
            return
        worker = self._worker
        assert worker is not None
        self._killing = self._closing = True
        if not at_once:
            worker.signal(signal.SIGTERM)
            with anyio.move_on_after(self._core.kill_grace):
                await self._wait_until(lambda: False)
        if not self._ended:
            worker.signal(signal.SIGKILL)
            await self._wait_until(lambda: False)

    def _raise_end(self, *, receiving: bool) -> NoReturn:
        if self._broken:
            raise anyio.BrokenResourceError(
                "the channel broke: a send was cancelled part-way through a message"
            )
        if self._closing:
            raise anyio.ClosedResourceError
        if self._error is not None:
            self._error_seen = True
            raise self._error
        if receiving:
            raise anyio.EndOfStream
        raise anyio.BrokenResourceError(f"{describe(self._fn)} returned: it takes no more items")

    def _check_entered(self) -> None:
        if self._progress is None:
            raise RuntimeError("use the channel as `async with pool.open_channel(...) as channel`")


Channel.__module__ = "anypool"
