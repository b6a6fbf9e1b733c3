"""A stream on Dask: the generator runs in a child process of a Dask worker
(:func:`.remote.run_stream_call`), and its batches come through a Dask queue, read here without
a thread: each read is a coroutine on the client's own event loop, whose end wakes the caller's.

Dask has no generator tasks, and its queues live in the scheduler: a batch goes from the worker
to the scheduler to this process. The consumer gives a credit (through a second queue) for each
batch it takes: the generator runs only as far ahead as the stream's ``buffer``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import anyio

from ..._errors import BrokenWorkerError, PoolClosedError
from ..._eventloop import current_loop, when_done
from ..._serialize import describe
from .._engine import BatchedStream
from .remote import CANCELLED, DIED, END

if TYPE_CHECKING:
    from .backend import DaskBackend

__all__ = ["CREDIT", "DaskStream", "StreamQueues"]

CREDIT: Final = 2
"""The batches a stream's generator may send before the consumer has taken the first
(``_batches.largest_batch`` counts them)."""

_LEFT: Final = pickle.dumps((CANCELLED, None))
"""What a consumer that leaves puts after the batches, to end a read it left waiting."""


class StreamQueues:
    """The two Dask queues of one stream, used from the client's event loop.

    Not ``distributed.Queue``: its methods on a synchronous client block the thread that calls
    them (a thread per read). These are the scheduler's calls it makes, on the client's loop.
    Each queue lives while the consumer or the worker holds it (the scheduler counts them).
    """

    def __init__(self, client: Any, name: str) -> None:
        self._client = client
        self._scheduler = client.scheduler
        self.items = f"{name}-items"
        self._credits = f"{name}-credits"

    def start(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``coroutine`` on the client's event loop (a thread of Dask's)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._client.loop.asyncio_loop)

    async def create(self) -> None:
        for name in (self.items, self._credits):
            await self._scheduler.queue_create(name=name, maxsize=0)

    async def get(self) -> bytes:
        """The next record of the stream, once there is one."""
        record = await self._scheduler.queue_get(name=self.items, timeout=None, batch=False)
        value: bytes = record["value"]
        return value

    async def give_credit(self) -> None:
        await self._scheduler.queue_put(name=self._credits, data=1, timeout=None)

    async def leave(self, *, stopping: bool) -> None:
        """Let go of the queues; ``stopping`` a generator that was killed: a credit ends its
        worker's wait for one, and a last record ends a read of ours left waiting."""
        if stopping:
            await self.give_credit()
            await self._scheduler.queue_put(name=self.items, data=_LEFT, timeout=None)
        for name in (self.items, self._credits):
            self._client._send_to_scheduler({"op": "queue_release", "name": name})


class DaskStream(BatchedStream):
    """The batches of a generator running on Dask, each waited for without a thread."""

    def __init__(
        self,
        backend: DaskBackend,
        fn: Callable[..., Any],
        call_id: str,
        future: Any,
        queues: StreamQueues,
        token: object,
    ) -> None:
        super().__init__(backend.counters, fn)
        self._backend = backend
        self._call_id = call_id
        self._future = future
        self._queues = queues
        self._token = token
        self._ended = False  # (the task's last record came: it runs nothing more)
        # The task's failure (its Dask worker died, terminate() cancelled it) ends a read
        # that waits: nothing more comes into the queue.
        self._task_error: BaseException | None = None
        self._wake: Any = None
        future.add_done_callback(self._task_done)

    async def next_batch(self) -> tuple[int, Any]:
        kind, body = pickle.loads(await self._record())
        if kind == END:
            self._ended = True
            raise StopAsyncIteration
        if kind == DIED:
            self._ended = True
            pid, exitcode = body
            raise BrokenWorkerError(pid, exitcode, f"the stream of {describe(self._fn)}")
        if kind == CANCELLED:
            self._ended = True
            raise PoolClosedError(
                f"the pool was terminated during the stream of {describe(self._fn)}"
            )
        self._queues.start(self._queues.give_credit())  # (not waited for)
        return kind, body

    async def release(self, *, died: bool) -> None:
        """Kill the generator's process if it may run on (``died``), let go of the queues, and
        free the stream's place among the pool's ``max_workers``."""
        backend = self._backend
        with anyio.CancelScope(shield=True):
            try:
                stopping = died and not self._ended
                if stopping and not self._future.done():
                    await backend._kill([(self._call_id, self._future)])
                if backend.connected():
                    queues = self._queues
                    await when_done(queues.start(queues.leave(stopping=stopping))).wait()
            finally:
                backend._running.pop(self._call_id, None)
                backend._leave(self._token)

    async def _record(self) -> bytes:
        """The stream's next record, once the queue has it; a failure of its task raised."""
        queues = self._queues
        read = queues.start(queues.get())
        self._wake = wake = current_loop().threadsafe_event()
        read.add_done_callback(lambda _: wake.set_from_any_thread())
        # (_task_done sets the error, then wakes the read it finds: this looks after storing
        # the read, so that one of the two sees the other.)
        if self._task_error is None:
            await wake.wait()
        if read.done():
            try:
                record: bytes = read.result()
            except Exception as error:
                raise self._broken(error) from error
            return record
        raise self._broken(self._task_error)

    def _task_done(self, future: Any) -> None:
        """(In Dask's callback thread.) A task that did not finish puts nothing more: wake the
        read that waits for it."""
        if future.status == "finished":
            return
        try:
            error = future.exception()
        except BaseException as cancelled:  # (a cancelled future raises its cancellation)
            error = cancelled
        self._task_error = error if error is not None else RuntimeError(future.status)
        if self._wake is not None:
            self._wake.set_from_any_thread()

    def _broken(self, error: BaseException | None) -> Exception:
        what = f"the stream of {describe(self._fn)}"
        if self._backend._terminated:
            return PoolClosedError(f"the pool was terminated during {what}")
        broken = BrokenWorkerError(None, None, what)
        broken.__cause__ = error
        return broken
