"""The Dask backend: each call is a Dask task, awaited from asyncio or trio without a thread of
ours; the task runs the call in a child process of its Dask worker, which is killed when the
caller is cancelled (Dask itself cannot stop a running task: dask/distributed#4694)."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import anyio
import anyio.abc
import anyio.to_thread

from ..._errors import BrokenWorkerError, PoolClosedError
from ..._eventloop import current_loop, when_done
from ..._serialize import Payload, describe, with_pickle_buffers
from .._base import (
    Call,
    Feature,
    StreamSession,
)
from .._batches import largest_batch
from .._engine import EngineBackend
from .remote import CANCELLED, DIED, kill_call, run_call, run_stream_call, stop_children
from .stream import CREDIT, DaskStream, StreamQueues

__all__ = ["DaskBackend"]

_call_ids = itertools.count()


class DaskBackend(EngineBackend):
    """Calls run as Dask tasks, each in a child process of the Dask worker that runs it.

    Args:
        client_or_address: a ``distributed.Client`` (synchronous: the backend waits for its
            futures from any event loop), a scheduler's address, or ``None``: the pool starts a
            ``LocalCluster`` of worker processes, one thread each, and closes it when it ends.
            A client or cluster given is never closed by anypool.
        cancel: ``"kill"``: a cancelled call's child process is killed, and the call stops;
            ``"abandon"``: Dask's own cancellation, which lets a running task run to its end
            (the next task on its worker waits for it).

    The pool's ``max_workers`` bounds the calls that run at once (default: the cluster's
    worker threads). Tasks are never retried: a call whose process dies raises
    :class:`BrokenWorkerError`.
    """

    name: ClassVar[str] = "dask"
    unsupported: ClassVar[frozenset[Feature]] = frozenset({Feature.CHANNEL, Feature.QUEUE})
    instead: ClassVar[dict[Feature, str]] = {
        Feature.CHANNEL: "use Dask's actors (client.submit(Class, actor=True)) instead",
        Feature.QUEUE: "use distributed.Queue instead",
    }

    def __init__(
        self,
        client_or_address: Any = None,
        *,
        cancel: Literal["kill", "abandon"] = "kill",
    ) -> None:
        try:
            import distributed
        except ImportError as error:
            raise ImportError(
                "DaskBackend needs Dask: install anypool[dask] (pip install 'anypool[dask]')"
            ) from error
        if cancel not in ("kill", "abandon"):
            raise ValueError(f"cancel must be 'kill' or 'abandon', not {cancel!r}")
        # Typed loosely: Dask is an optional dependency, absent where anypool is type-checked.
        self._distributed: Any = distributed
        if isinstance(client_or_address, distributed.Client) and client_or_address.asynchronous:
            raise ValueError(
                "client_or_address: an asynchronous Client serves one asyncio loop; pass a "
                "synchronous Client, or the scheduler's address (client.scheduler.address)"
            )
        self._given = client_or_address
        self._cancel = cancel
        self._client: Any = None
        self._cluster: Any = None
        self._running: dict[str, Any] = {}  # call id -> its Dask future
        self._replaced = 0
        super().__init__()
        # Where the child processes find the functions pickled by reference.
        self._sys_path = tuple(sys.path)

    # --- the protocol ----------------------------------------------------------------------

    def engine_capacity(self) -> int | None:
        if self._client is None:
            return None
        threads: int = sum(self._client.nthreads().values())
        return threads

    async def open_stream(self, call: Call, *, buffer: int) -> StreamSession:
        """The generator runs in a Dask task (:func:`.remote.run_stream_call`), which holds
        its place among the pool's ``max_workers`` until the stream ends."""
        fn = call.fn
        payload = self.pickled_call(call, buffer)
        token = object()
        await self._admit(token)
        try:
            client = self._client
            call_id = _call_id(fn)
            queues = StreamQueues(client, call_id)
            await when_done(queues.start(queues.create())).wait()
            future = client.submit(
                run_stream_call,
                call_id,
                self._sys_path,
                with_pickle_buffers(payload),
                largest_batch(buffer),
                call_id,
                CREDIT,
                key=call_id,
                pure=False,
                retries=0,
            )
        except BaseException:
            self._leave(token)
            raise
        self._running[call_id] = future
        return DaskStream(self, fn, call_id, future, queues, token)

    async def join(self) -> None:
        await self._pending.wait_all_done()
        await self._shut_down()

    async def terminate(self) -> None:
        self._closed = self._terminated = True
        await self._kill(list(self._running.items()))
        await self._pending.wait_all_done()
        await self._shut_down()

    def shutdown_now(self, grace: float) -> None:
        self._closed = self._terminated = True
        client = self._client
        if client is not None:
            for call_id, future in list(self._running.items()):
                future.cancel()
                client.run(kill_call, call_id, wait=False)
            self._close_client()

    def worker_counts(self) -> tuple[int, int, int, int]:
        # Dask's worker processes are Dask's, and the children they run calls in theirs: the
        # pool counts the children it had killed (or that died), which their workers replace.
        return 0, 0, 0, self._replaced

    def describe(self) -> str:
        return f"{super().describe()} cancel={self._cancel}"

    # --- calls -------------------------------------------------------------------------------

    async def submit(
        self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool
    ) -> tuple[int, Any]:
        """Run a pickled call in a Dask task, once fewer than ``max_workers`` run; its outcome
        as a local worker reports it, counted started. A failure of the call's process (it
        died, the pool was terminated) is raised, counted as ended."""
        token = object()
        await self._admit(token)
        try:
            call_id = _call_id(fn)
            future = self._client.submit(
                run_call,
                call_id,
                self._sys_path,
                with_pickle_buffers(payload),
                key=call_id,
                pure=False,
                retries=0,
            )
            self._running[call_id] = future
            self.counters.started()
            try:
                outcome = await self._outcome(future, fn)
            except Exception as error:
                self.counters.ended_with(error)
                raise
            except BaseException:
                self.counters.ended("cancelled")
                await self._stop(call_id, future, kill=kill_on_cancel or self._terminated)
                raise
            finally:
                self._running.pop(call_id, None)
            return outcome
        finally:
            self._leave(token)

    async def _outcome(self, future: Any, fn: Callable[..., Any]) -> tuple[int, Any]:
        """Wait for the task: no thread, no polling; Dask's done-callback wakes this loop."""
        try:
            kind, body = await _result(future)
        except Exception as error:
            # The Dask worker died (KilledWorker), or the task was cancelled (terminate()): the
            # call's own errors come back as ERROR outcomes, never raised.
            if self._terminated:
                raise PoolClosedError(
                    f"the pool was terminated during the call to {describe(fn)}"
                ) from None
            raise BrokenWorkerError(None, None, f"the call to {describe(fn)}") from error
        if kind == DIED:
            pid, exitcode = body
            self._replaced += 1  # (the Dask worker starts a new child for its next call)
            raise BrokenWorkerError(pid, exitcode, f"the call to {describe(fn)}")
        if kind == CANCELLED:
            raise PoolClosedError(f"the pool was terminated during the call to {describe(fn)}")
        return kind, body

    async def _stop(self, call_id: str, future: Any, *, kill: bool) -> None:
        """A call was cancelled: kill its child process (and wait until its Dask worker says
        so), or leave it to run out, its result dropped; ``join()`` waits for it."""
        if not kill or self._cancel == "abandon":
            if self._cancel == "abandon" and kill:
                future.cancel()  # Dask's own: a running task runs on
                return
            self._pending.add()

            async def run_out() -> None:
                try:
                    await when_done(future).wait()
                finally:
                    self._pending.finished()

            current_loop().spawn_detached(run_out)
            return
        await self._kill([(call_id, future)])

    async def _kill(self, calls: list[tuple[str, Any]]) -> None:
        """Cancel the tasks of ``calls`` (call id, Dask future) and kill the children running
        them, once the Dask workers have answered (in a thread: ``client.run`` blocks)."""
        client = self._client
        if client is None or not calls:
            return

        def kill_them() -> int:
            killed = 0
            for call_id, future in calls:
                future.cancel()
                killed += any(client.run(kill_call, call_id).values())
            return killed

        with anyio.CancelScope(shield=True):
            self._replaced += await anyio.to_thread.run_sync(kill_them)

    # --- admission and lifecycle -----------------------------------------------------------

    async def _admit(self, token: object) -> None:
        """Wait until fewer than ``max_workers`` calls (streams) run, then count one more,
        for ``token``, until :meth:`_leave`; it stays pending (``join()`` waits) until then."""
        self._pending.add()
        try:
            await self.ready()
            await self._capacity_limiter().acquire_on_behalf_of(token)
        except BaseException:
            self._pending.finished()
            raise
        if self._terminated:
            self._leave(token)
            raise PoolClosedError("the pool was terminated while the call waited")

    def _leave(self, token: object) -> None:
        self._capacity_limiter().release_on_behalf_of(token)
        self._pending.finished()

    def connected(self) -> bool:
        return self._client is not None

    def connect(self) -> None:
        distributed = self._distributed
        given = self._given
        if isinstance(given, distributed.Client):
            self._client = given
            return
        if given is None:
            import dask

            # A worker that dies fails its task at once, rather than after Dask's retries.
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self._cluster = distributed.LocalCluster(
                    n_workers=self._max_workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # (None would take 8787, or warn where it is taken)
                )
            given = self._cluster
        self._client = distributed.Client(given, set_as_default=False)

    async def _shut_down(self) -> None:
        if self._client is not None:
            await anyio.to_thread.run_sync(self._close_client)

    def _close_client(self) -> None:
        """Stop the idle child processes, and close the client and cluster the backend made."""
        client, self._client = self._client, None
        if client is None:
            return
        if self._cluster is None:
            client.run(stop_children)  # (the cluster's workers outlive the pool)
        if client is not self._given:
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


async def _result(future: Any) -> tuple[int, Any]:
    """The result of a Dask future, fetched by Dask's callback thread once it is done (waking
    this loop then), or its exception raised."""
    outcome: list[Any] = []
    event = current_loop().threadsafe_event()

    def fetch(done: Any) -> None:
        try:
            outcome.append((True, done.result()))
        except BaseException as error:
            outcome.append((False, error))
        event.set_from_any_thread()

    future.add_done_callback(fetch)
    await event.wait()
    ok, value = outcome[0]
    if not ok:
        raise value
    result: tuple[int, Any] = value
    return result


def _call_id(fn: Callable[..., Any]) -> str:
    """A name for a call, unique in the cluster: its task's key, and what kills it."""
    return f"anypool-{describe(fn)}-{os.getpid()}-{next(_call_ids)}"


DaskBackend.__module__ = "anypool.backends"
