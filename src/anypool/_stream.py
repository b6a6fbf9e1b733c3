"""``pool.stream``: the items of a generator running in a worker, as it yields them."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ._errors import BrokenWorkerError, PoolClosedError, SerializationError
from ._eventloop import current_library, spawn_detached
from ._results import ResultIterator
from ._serialize import Payload, describe, dumps_call_arguments, load_error, load_result
from .backends.local import wire as protocol
from .backends.local.transport import ChannelClosed

if TYPE_CHECKING:
    from ._pool import CallOptions, _PoolCore
    from .backends.local.handle import WorkerHandle

__all__ = ["StreamResults"]

T = TypeVar("T")


class StreamResults(ResultIterator[T]):
    """The items of :meth:`Pool.stream`, as an async iterator and an async context manager.

    Leaving ``async with``, :meth:`aclose`, a cancellation, or dropping the last reference to
    this object closes the generator in the worker.
    """

    __slots__ = ()

    def __init__(
        self,
        core: _PoolCore,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        super().__init__(_Stream(core, options, fn, args, kwargs))


class _Stream:
    """One stream's worker and flow control."""

    def __init__(
        self,
        core: _PoolCore,
        options: CallOptions,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._core = core
        self._options = options
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._worker: WorkerHandle | None = None
        self._payload: Payload = b""
        self._started = False
        self._done = False
        # Items handed out that the worker has not been told of; it is told in batches.
        self._unacknowledged = 0
        self._credit_batch = max(1, options.buffer // 2)

    async def next(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        if not self._started:
            await self._start()
        try:
            kind, body = await self._receive()
        except ChannelClosed:
            worker = self._worker
            assert worker is not None
            exitcode = await self._core.stop_busy(worker, terminate=False)
            self._finish(failed=True)
            if self._core.terminated:
                raise PoolClosedError(
                    f"the pool was terminated during the stream of {describe(self._fn)}"
                ) from None
            raise BrokenWorkerError(
                worker.pid,
                exitcode,
                f"the stream of {describe(self._fn)}",
                first_call=worker.calls == 0,
            ) from None
        except BaseException:
            # Cancelled: close the generator as when the consumer leaves early.
            await self.aclose()
            raise
        worker = self._worker
        assert worker is not None
        if kind == protocol.ITEM:
            self._unacknowledged += 1
            try:
                return load_result(body, self._fn)
            except SerializationError:
                # The stream cannot go on past an item it cannot deliver.
                await self._close(failed=True)
                raise
        if kind == protocol.INIT_FAILED:
            error = await self._core.initializer_failed(worker, body)
            self._finish(failed=True)
            raise error
        self._release(worker)
        self._finish(failed=kind == protocol.ERROR)
        if kind == protocol.ERROR:
            raise load_error(body)
        raise StopAsyncIteration

    def enter(self) -> None:
        # The stream starts at the first item: that is where its errors are raised.
        pass

    async def aclose(self) -> None:
        await self._close(failed=None)

    async def _close(self, *, failed: bool | None) -> None:
        """Close the generator in the worker (kill the worker if it does not finish)."""
        if self._done:
            return
        worker = self._worker
        if worker is None:
            self._done = True
            return
        core = self._core
        with anyio.CancelScope(shield=True):
            try:
                await worker.channel.send(protocol.CLOSE, b"")
                # Items already on their way are dropped; the generator's end confirms it closed.
                with anyio.fail_after(core.kill_grace):
                    while (await worker.receive())[0] == protocol.ITEM:
                        pass
            except TimeoutError:
                # It had kill_grace to finish after GeneratorExit: no second grace for SIGTERM.
                worker.signal(signal.SIGKILL)
                await core.stop_busy(worker, terminate=False)
            except ChannelClosed:
                await core.stop_busy(worker, terminate=True)
            else:
                self._release(worker)
        self._finish(failed=failed)

    def abandon(self) -> None:
        """Close in the background: the consumer dropped the stream without closing it."""
        if self._worker is not None and not self._done:
            # Without a running event loop (at interpreter exit) the pool stops the worker.
            with contextlib.suppress(Exception):
                spawn_detached(self.aclose)

    async def _start(self) -> None:
        self._started = True
        core = self._core
        try:
            core.check_open()
            event_loop = current_library()
            call = (self._fn, self._args, self._kwargs, event_loop, self._options.buffer)
            self._payload = dumps_call_arguments(call, self._fn, self._args, self._kwargs)
            self._worker = await core.open_session(protocol.STREAM, self._payload)
        except BaseException:
            self._done = True
            raise

    async def _receive(self) -> tuple[int, bytes | bytearray]:
        worker = self._worker
        assert worker is not None
        if self._unacknowledged >= self._credit_batch:
            count, self._unacknowledged = self._unacknowledged, 0
            # A worker that exited cannot take credit, but the items it yielded before are
            # still in the pipe: read on, and its end comes after them.
            with contextlib.suppress(ChannelClosed):
                await worker.channel.send(protocol.CREDIT, protocol.COUNT.pack(count))
        kind, body = await worker.receive()
        while kind == protocol.RETIRING:
            # The worker retired before it read the stream: start it on another one.
            self._worker = worker = await self._core.replace_retired(worker)
            await worker.channel.send(protocol.STREAM, self._payload)
            kind, body = await worker.receive()
        return kind, body

    def _release(self, worker: WorkerHandle) -> None:
        worker.calls += 1
        self._core.release(worker)

    def _finish(self, *, failed: bool | None) -> None:
        """Account for the end of the stream: ``failed`` is ``None`` when it was cancelled."""
        self._done = True
        self._core.end_session(failed=failed)


StreamResults.__module__ = "anypool"
