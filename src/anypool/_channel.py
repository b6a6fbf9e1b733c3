"""``pool.open_channel``: a function running in a worker, and a two-way channel to it."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar

import anyio
import anyio.abc

from ._eventloop import current_library, spawn_detached
from ._serialize import Payload, describe, dumps_item, load_result
from .backends._base import Backend, Call, ChannelSession

if TYPE_CHECKING:
    from ._pool import CallOptions

__all__ = ["Channel"]

# What this end sends to the function, and what it receives from it.
SendT = TypeVar("SendT", contravariant=True)
ReceiveT = TypeVar("ReceiveT", covariant=True)


class Channel(anyio.abc.ObjectStream[Any], Generic[SendT, ReceiveT]):
    """The parent's end of a channel to a function running in a worker, from
    :meth:`Pool.open_channel`: an anyio object stream.

    ``await send(item)`` waits while the function has ``buffer`` items it did not ``recv`` yet;
    ``await receive()`` (or ``async for``) returns what the function sends, and signals the end
    (``anyio.EndOfStream``) once the function returned, or raises what it raised.
    :meth:`send_eof` ends the function's ``recv`` loop; :meth:`result` waits for its return value.

    ``Channel[SendT, ReceiveT]`` sends ``SendT`` items to the function and receives
    ``ReceiveT`` items from it: each end names what it sends first, so a function that takes a
    ``ChannelEnd[int, str]`` (it sends ints, receives strs) gives a ``Channel[str, int]``.

    The methods have anyio's names (``receive``, ``send_eof``, ``aclose``): this end is an
    :class:`anyio.abc.ObjectStream` and goes where one does. The worker's end keeps
    :mod:`multiprocessing`'s (``recv``), as code written for a Pipe expects.

    Any task may use the channel; receiving, sending and closing are safe from several at once.
    """

    def __init__(
        self,
        backend: Backend,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._backend = backend
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._buffer = options.buffer
        self._session: ChannelSession | None = None
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
        self._ended = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._error_seen = False

    # --- the stream ----------------------------------------------------------------------------

    async def send(self, item: SendT) -> None:
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
            await self._write("item", payload)
        except BaseException:
            self._credit += 1
            raise

    async def receive(self) -> ReceiveT:
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
        item: ReceiveT = load_result(self._inbox.popleft(), self._fn)
        return item

    async def send_eof(self) -> None:
        """Tell the function that nothing more will be sent: its ``recv`` raises ``EOFError``
        and its iteration ends, once it took what was sent before. Idempotent."""
        self._check_entered()
        if not (self._eof_sent or self._ended or self._closing):
            await self._write("eof", b"")
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
        if self._session is None or self._closing:
            self._closing = True
            return
        self._closing = True
        self._inbox.clear()
        with anyio.CancelScope(shield=True):
            if not self._ended:
                with anyio.move_on_after(self._backend.kill_grace):
                    # Refused when the worker is gone, or was killed: its end comes all the same.
                    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                        await self._write("close", b"")
                    await self._wait_until(lambda: False)
                # It had kill_grace to return after the close: no second grace for SIGTERM.
                await self._kill(at_once=True)

    def __aiter__(self) -> Channel[SendT, ReceiveT]:
        return self

    async def __anext__(self) -> ReceiveT:
        """The next item the function sent; the iteration ends once it returned."""
        # As anyio's, typed as the items received (the base class is an ObjectStream of Any).
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Channel[SendT, ReceiveT]:
        """Start the function in a worker."""
        if self._progress is not None:
            raise RuntimeError("this channel was already opened")
        backend = self._backend
        backend.check_open()
        self._progress = anyio.Event()
        call = Call(self._fn, self._args, self._kwargs, current_library())
        self._session = await backend.open_channel(call, buffer=self._buffer)
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
                session = self._session
                assert session is not None
                if not self._ended:
                    await session.stop()
                    self._end()
        finally:
            progress, self._progress = self._progress, anyio.Event()
            assert progress is not None
            progress.set()

    async def _read_one(self) -> None:
        session = self._session
        assert session is not None
        event, body = await session.read()
        if event == "item":
            if not self._closing:
                self._inbox.append(body)
        elif event == "credit":
            self._credit += body
        else:
            value, error = body
            self._end(value=value, error=error)

    def _end(self, *, value: Any = None, error: BaseException | None = None) -> None:
        # After the parent closed the channel, the function reports only errors of its own:
        # keep them, to raise where the channel's block ends.
        self._ended = True
        self._value, self._error = value, error

    # --- helpers -------------------------------------------------------------------------------

    async def _acknowledge(self) -> None:
        """Tell the function of the items taken, so that it may send as many more."""
        # Counted out before the write: another task receiving meanwhile must not send them too.
        count, self._taken = self._taken, 0
        try:
            await self._write("credit", count)
        except BaseException:
            self._taken += count
            raise

    async def _write(
        self, kind: Literal["item", "credit", "eof", "close"], payload: Payload | int
    ) -> None:
        session = self._session
        assert session is not None
        session.writing(True)
        try:
            await session.write(kind, payload)
        except BrokenPipeError:
            self._broken = True
            with anyio.CancelScope(shield=True):
                await self._kill()
            raise anyio.BrokenResourceError(
                "the channel broke: a send was cancelled part-way through a message"
            ) from None
        except EOFError:
            # The worker is gone: its end says why.
            with anyio.CancelScope(shield=True):
                await self._wait_until(lambda: False)
            self._raise_end(receiving=False)
        except BaseException:
            if session.broken:
                # What follows a partial message cannot be read: the channel is over.
                self._broken = True
                with anyio.CancelScope(shield=True):
                    await self._kill()
            raise
        finally:
            session.writing(False)

    async def _kill(self, *, at_once: bool = False) -> None:
        """Kill the worker unless the function ended: SIGTERM, then SIGKILL after
        ``kill_grace`` (SIGKILL at once if ``at_once``); return once it is reaped."""
        if self._ended:
            return
        session = self._session
        assert session is not None
        self._killing = self._closing = True
        session.end_on_kill()
        if not at_once:
            session.interrupt(now=False)
            with anyio.move_on_after(self._backend.kill_grace):
                await self._wait_until(lambda: False)
        if not self._ended:
            session.interrupt(now=True)
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
