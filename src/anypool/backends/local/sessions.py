"""``pool.stream`` and ``pool.open_channel`` on the local backend: a worker given to one
generator, or one function with a channel to it, until it ends."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any, Literal

import anyio

from ..._errors import SerializationError
from ..._serialize import Payload, load_error, load_result
from ..._stats import Ending
from .._base import ChannelEvent, ChannelSession, StreamSession
from . import wire
from .handle import WorkerHandle
from .replies import Retired, reply
from .transport import ChannelClosed
from .workers import WorkerCache

__all__ = ["LocalChannel", "LocalStream", "open_session"]


async def open_session(cache: WorkerCache, kind: int, payload: Payload) -> WorkerHandle:
    """A worker that was sent ``payload`` as a ``kind`` message, which starts a stream or a
    channel: a call that runs until its session ends."""
    cache.pending.add()
    worker: WorkerHandle | None = None
    try:
        worker = await cache.acquire()
        cache.counters.started()
        await worker.channel.send(kind, payload)
    except BaseException:
        if worker is not None:
            cache.counters.ended("aborted")
            await cache.stop_busy(worker, terminate=True)
        cache.pending.finished()
        raise
    return worker


class _Session:
    """A worker lent to one stream or channel, and the end of that session, counted once."""

    noun = ""

    def __init__(
        self, cache: WorkerCache, worker: WorkerHandle, fn: Callable[..., Any], payload: Payload
    ) -> None:
        self._cache = cache
        self._worker = worker
        self._fn = fn
        self._payload = payload
        self._over = False

    async def _replace_retired(self) -> None:
        """The worker retired before it read the session's start: start it on another."""
        self._worker = await self._cache.replace_retired(self._worker)
        # A worker gone at once is told by the next reply.
        with contextlib.suppress(ChannelClosed):
            await self._restart()

    async def _restart(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        self._worker.calls += 1
        self._cache.release(self._worker)

    def _end(self, how: Ending) -> None:
        if not self._over:
            self._over = True
            self._cache.counters.ended(how)
            self._cache.pending.finished()


class LocalStream(_Session, StreamSession):
    """A generator running in a worker; its items come with credits (see ``wire``)."""

    noun = "the stream of"

    def __init__(
        self,
        cache: WorkerCache,
        worker: WorkerHandle,
        fn: Callable[..., Any],
        payload: Payload,
        buffer: int,
    ) -> None:
        super().__init__(cache, worker, fn, payload)
        # Items handed out that the worker has not been told of; it is told in batches.
        self._unacknowledged = 0
        self._credit_batch = max(1, buffer // 2)

    async def next(self) -> Any:
        if self._over:
            raise StopAsyncIteration
        if self._unacknowledged >= self._credit_batch:
            count, self._unacknowledged = self._unacknowledged, 0
            # A worker that exited cannot take credit, but the items it yielded before are
            # still in the pipe: read on, and its end comes after them.
            with contextlib.suppress(ChannelClosed):
                await self._worker.channel.send(wire.CREDIT, wire.COUNT.pack(count))
        try:
            kind, body = await reply(self._cache, self._worker, self.noun, self._fn)
        except Retired:
            await self._replace_retired()
            return await self.next()
        except Exception:
            # The worker died, was never ready, or the pool was terminated: it is reaped.
            self._end("failed")
            raise
        except BaseException:
            # Cancelled: close the generator as when the consumer leaves early.
            await self.aclose()
            raise
        if kind == wire.ITEM:
            self._unacknowledged += 1
            try:
                return load_result(body, self._fn)
            except SerializationError:
                # The stream cannot go on past an item it cannot deliver.
                await self._close("failed")
                raise
        self._release()
        self._end("failed" if kind == wire.ERROR else "completed")
        if kind == wire.ERROR:
            raise load_error(body)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        await self._close("cancelled")

    async def _close(self, how: Ending) -> None:
        """Close the generator in the worker (kill the worker if it does not finish)."""
        if self._over:
            return
        cache, worker = self._cache, self._worker
        with anyio.CancelScope(shield=True):
            try:
                await worker.channel.send(wire.CLOSE, b"")
                # Items already on their way are dropped; the generator's end confirms it closed.
                with anyio.fail_after(cache.kill_grace):
                    while (await worker.receive())[0] == wire.ITEM:
                        pass
            except TimeoutError:
                # It had kill_grace to finish after GeneratorExit: no second grace for SIGTERM.
                worker.signal(signal.SIGKILL)
                await cache.stop_busy(worker, terminate=False)
            except ChannelClosed:
                await cache.stop_busy(worker, terminate=True)
            else:
                self._release()
        self._end(how)

    async def _restart(self) -> None:
        await self._worker.channel.send(wire.STREAM, self._payload)


_KINDS = {"item": wire.ITEM, "credit": wire.CREDIT, "eof": wire.EOF, "close": wire.CLOSE}


class LocalChannel(_Session, ChannelSession):
    """A function running in a worker with a channel to it: items and credits both ways."""

    noun = "the channel to"

    def __init__(
        self, cache: WorkerCache, worker: WorkerHandle, fn: Callable[..., Any], payload: Payload
    ) -> None:
        super().__init__(cache, worker, fn, payload)
        self._eof_sent = False
        self._closing = False
        self._killing = False
        # Writes under way; the worker is handed back only once none is left.
        self._writing = 0
        self._release_pending = False

    @property
    def broken(self) -> bool:
        return self._worker.channel.cut_short

    async def write(self, kind: Literal["item", "credit", "eof", "close"], payload: Any) -> None:
        worker = self._worker
        if kind == "credit":
            payload = wire.COUNT.pack(payload)
        try:
            await worker.channel.send(_KINDS[kind], payload)
        except ChannelClosed:
            if worker.channel.cut_short:
                raise BrokenPipeError from None
            raise EOFError from None
        if kind == "eof":
            self._eof_sent = True
        elif kind == "close":
            self._closing = True

    def writing(self, begun: bool) -> None:
        self._writing += 1 if begun else -1
        if self._release_pending and not self._writing:
            self._release_pending = False
            self._release()

    async def read(self) -> ChannelEvent:
        try:
            kind, body = await reply(self._cache, self._worker, self.noun, self._fn)
        except Retired:
            await self._replace_retired()
            return await self.read()
        except Exception as lost:
            # Reaped already. Killed by the caller, it ended as the caller wanted.
            self._end("cancelled" if self._killing else "failed")
            return "end", (None, None if self._killing else lost)
        if kind == wire.ITEM:
            return "item", body
        if kind == wire.CREDIT:
            return "credit", wire.COUNT.unpack(body)[0]
        if self._killing:
            # Too late: it is being killed.
            with anyio.CancelScope(shield=True):
                await self._cache.stop_busy(self._worker, terminate=True)
        elif self._writing:
            # A write of the caller's is under way: the next call must not get its message.
            self._release_pending = True
        else:
            self._release()
        error: BaseException | None = None
        value = None
        if kind == wire.ERROR:
            error = load_error(body)
        else:
            try:
                value = load_result(body, self._fn)
            except SerializationError as unpicklable:
                error = unpicklable
        self._end("cancelled" if self._killing else "failed" if error else "completed")
        return "end", (value, error)

    def end_on_kill(self) -> None:
        self._killing = self._closing = True

    def interrupt(self, *, now: bool) -> None:
        self._worker.signal(signal.SIGKILL if now else signal.SIGTERM)

    async def stop(self) -> None:
        self._killing = True
        if not self._over:
            with anyio.CancelScope(shield=True):
                await self._cache.stop_busy(self._worker, terminate=True)
            self._end("cancelled")

    async def _restart(self) -> None:
        # Nothing but OPEN, EOF and CLOSE is sent before the function starts.
        channel = self._worker.channel
        await channel.send(wire.OPEN, self._payload)
        if self._eof_sent:
            await channel.send(wire.EOF, b"")
        if self._closing:
            await channel.send(wire.CLOSE, b"")
