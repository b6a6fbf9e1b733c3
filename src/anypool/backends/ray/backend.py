"""The Ray backend: a pool's workers are Ray actors, up to ``max_workers``, each running one call
at a time, awaited from asyncio or trio without a thread of ours; a cancelled call's actor is
killed (``ray.kill``), and with it the call and nothing else."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

from ..._errors import BrokenWorkerError, PoolClosedError
from ..._eventloop import current_loop, when_done
from ..._serialize import (
    Payload,
    describe,
    with_pickle_buffers,
)
from .._base import (
    Call,
    Feature,
    StreamSession,
)
from .._batches import largest_batch
from .._engine import BatchedStream, EngineBackend
from .remote import PoolWorker
from .workers import Place, Workers

__all__ = ["RayBackend"]


class RayBackend(EngineBackend):
    """Calls run in Ray actors, the pool's workers, on the Ray this process is connected to.

    Args:
        address: the cluster to connect to (``"auto"``, ``"ray://host:10001"``...), when this
            process has not initialised Ray itself; ``None`` starts a local Ray.
        init_options: more arguments of ``ray.init``, when the backend calls it.
        actor_options: arguments of ``.options(...)`` for every worker actor (``num_cpus``,
            default 1; ``resources``, ``runtime_env``...). Workers are never restarted, nor
            their calls retried: a call whose process dies raises :class:`BrokenWorkerError`.

    A Ray that was initialised already is used as it is and left running; a Ray the backend
    started is shut down when its pool is joined or terminated. The pool's ``max_workers``
    bounds the calls that run at once (default: the cluster's CPUs). Workers start as calls
    need them and hold their resources until the pool is joined or terminated, as a local
    pool's processes do; one killed with a cancelled call is replaced at once.

    Why actors and not tasks: ``ray.cancel(force=True)`` kills whichever task the process runs
    when the kill arrives, and Ray gives a process the next task as soon as one ends. A
    cancel that meets its call's end killed the next call (Ray 2.60, docs/distributed.md). An
    actor runs only the calls this pool gives it, one at a time, so killing it is exact.
    """

    name: ClassVar[str] = "ray"
    unsupported: ClassVar[frozenset[Feature]] = frozenset({Feature.CHANNEL, Feature.QUEUE})
    instead: ClassVar[dict[Feature, str]] = {
        Feature.CHANNEL: "talk to a Ray actor instead",
        Feature.QUEUE: "use ray.util.queue.Queue instead",
    }

    def __init__(
        self,
        address: str | None = None,
        *,
        init_options: dict[str, Any] | None = None,
        actor_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError as error:
            raise ImportError(
                "RayBackend needs Ray: install anypool[ray] (pip install 'anypool[ray]')"
            ) from error
        # Typed loosely: Ray is an optional dependency, absent where anypool is type-checked.
        self._ray: Any = ray
        self._address = address
        self._init_options = dict(init_options or {})
        self._actor_options = {
            "num_cpus": 1,  # (an actor's default is none: it would not hold a CPU as it runs)
            **(actor_options or {}),
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        self._started_ray = False
        super().__init__()
        # sys.path: where a Ray worker finds the functions pickled by reference (PoolWorker).
        self._workers = Workers(ray, tuple(sys.path))

    # --- the protocol ----------------------------------------------------------------------

    def engine_capacity(self) -> int | None:
        if self._ray.is_initialized():
            return int(self._ray.cluster_resources().get("CPU", 1))
        return None

    async def open_stream(self, call: Call, *, buffer: int) -> StreamSession:
        fn = call.fn
        payload = self.pickled_call(call, buffer)
        # The stream holds its worker until it ends, in whichever task.
        place = await self._take_worker()
        generator = place.worker.stream.options(
            num_returns="streaming",
            # Ray pauses the generator while this many of its objects are unread.
            _generator_backpressure_num_objects=1,
        ).remote(with_pickle_buffers(payload), largest_batch(buffer))
        return _RayStream(self, fn, generator, place)

    async def join(self) -> None:
        await self._pending.wait_all_done()
        await self._workers.retire()
        self._shut_down()

    async def terminate(self) -> None:
        self._kill_all()
        await self._pending.wait_all_done()
        await self._workers.retire()
        self._shut_down()

    def shutdown_now(self, grace: float) -> None:
        self._kill_all()
        self._shut_down()

    def worker_counts(self) -> tuple[int, int, int, int]:
        workers = self._workers
        idle, busy = len(workers.idle), len(workers.busy)  # (not those starting)
        return idle + busy, idle, busy, workers.replaced

    # --- calls -------------------------------------------------------------------------------

    async def submit(
        self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool
    ) -> tuple[int, Any]:
        """Run a pickled call in a worker, once one is free; its outcome as a local worker
        reports it, counted started. A failure of the worker itself (its process died, the
        pool was terminated) is raised, counted as ended."""
        place = await self._take_worker()
        ref = place.worker.call.remote(with_pickle_buffers(payload))
        self.counters.started()
        try:
            outcome = await self._outcome(ref, fn)
        except Exception as error:
            self.counters.ended_with(error)
            self._give_back(place, alive=False)
            raise
        except BaseException:
            self.counters.ended("cancelled")
            await self._stop(place, ref, kill=kill_on_cancel or self._terminated)
            raise
        self._give_back(place, alive=True)
        return outcome

    async def _outcome(
        self, ref: Any, fn: Callable[..., Any], what: str = "the call to"
    ) -> tuple[int, Any]:
        """Wait for the task: no thread, no polling; Ray's done-callback wakes this loop. Its
        failures name ``what`` ran: ``the call to`` ``fn``, ``the stream of`` it."""
        future = ref.future()
        await when_done(future).wait()
        exceptions = self._ray.exceptions
        try:
            outcome: tuple[int, Any] = future.result()
        except exceptions.RayError as error:
            # The worker died (killed by terminate(); os._exit, a signal, the node lost): the
            # call's own errors come back as ERROR outcomes, never as a RayError.
            if self._terminated:
                raise PoolClosedError(
                    f"the pool was terminated during {what} {describe(fn)}"
                ) from None
            broken = BrokenWorkerError(None, None, f"{what} {describe(fn)}")
            broken.__cause__ = error
            raise broken from error
        return outcome

    async def _stop(self, place: Place, ref: Any, *, kill: bool) -> None:
        """A call was cancelled: kill its worker, or leave the call to run out, its result
        dropped, its worker held until then (``join()`` waits for it).

        The kill is not waited for (Ray confirms an actor's death some 200 ms later): the
        worker runs nothing more of this pool's, and a new one starts in its place at once."""
        if kill:
            self._give_back(place, alive=False)
            return
        future = ref.future()
        done = when_done(future)

        # (Still pending, as its place is held: join() waits for it.)
        async def run_out() -> None:
            try:
                await done.wait()
            finally:
                self._give_back(place, alive=future.done() and future.exception() is None)

        current_loop().spawn_detached(run_out)

    # --- admission and lifecycle -----------------------------------------------------------

    async def _take_worker(self) -> Place:
        """A worker for one call (a stream), once fewer than ``max_workers`` are busy and one
        is idle (:meth:`Workers.wait_for`). Counted pending until :meth:`_give_back`."""
        self._pending.add()
        place = Place()
        try:
            await self.ready()
            await self._capacity_limiter().acquire_on_behalf_of(place)
            try:
                await self._workers.wait_for(place, self.capacity)
            except BaseException:
                self._capacity_limiter().release_on_behalf_of(place)
                raise
        except BaseException:
            self._pending.finished()
            raise
        return place

    def _give_back(self, place: Place, *, alive: bool) -> None:
        """The call (stream) in ``place`` has ended: its worker is idle again, or, dead (or
        killed), replaced while the pool takes calls."""
        self._workers.release(place, alive=alive, replace=not self._closed)
        self._capacity_limiter().release_on_behalf_of(place)
        self._pending.finished()

    def _kill_all(self) -> None:
        self._closed = self._terminated = True
        self._workers.kill_all()

    def connected(self) -> bool:
        return self._workers.worker_class is not None

    def connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self._address, **self._init_options)
            self._started_ray = True
        self._workers.worker_class = ray.remote(PoolWorker).options(**self._actor_options)

    def _shut_down(self) -> None:
        """Kill the idle workers (the pool is done with them), and shut down the Ray that the
        backend started."""
        self._workers.stop_idle()
        self._workers.worker_class = None
        if self._started_ray:
            self._started_ray = False
            self._ray.shutdown()


class _RayStream(BatchedStream):
    """A Ray streaming generator's batches, each waited for without a thread."""

    def __init__(
        self, backend: RayBackend, fn: Callable[..., Any], generator: Any, place: Place
    ) -> None:
        super().__init__(backend.counters, fn)
        self._backend = backend
        self._generator = generator
        self._place = place

    async def next_batch(self) -> tuple[int, Any]:
        """The generator's next object, once it is ready: Ray's own asyncio wait would not serve
        trio, so this waits on the done-callback of the object Ray says comes next."""
        generator = self._generator
        core_worker = generator.worker.core_worker
        expected, ready = core_worker.peek_object_ref_stream(generator._generator_ref)
        if not ready:
            await when_done(expected.future()).wait()
        try:
            ref = next(generator)  # ready now: it does not block
        except StopIteration:
            raise StopAsyncIteration from None
        outcome: tuple[int, Any] = await self._backend._outcome(ref, self._fn, "the stream of")
        return outcome

    async def release(self, *, died: bool) -> None:
        """The worker is idle again, or killed (``died``: not Ray's interrupt, which reaches a
        generator only when it runs Python code) and replaced."""
        self._backend._give_back(self._place, alive=not died)


RayBackend.__module__ = "anypool.backends"
