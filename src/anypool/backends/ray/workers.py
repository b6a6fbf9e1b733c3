"""A pool's workers on Ray: its actors, idle, busy or starting, and the calls waiting for one.

Calls get workers in the order they asked: the first to wait gets the next worker that is idle,
whichever that is. Ray may not find the resources for every worker (``max_workers`` above the
cluster's CPUs): a call must not wait for a worker that cannot start while another is idle, nor
a call that came first wait for one that came later.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any

import anyio

from ..._errors import BrokenWorkerError, PoolClosedError
from ..._eventloop import current_loop, when_done

__all__ = ["Place", "Workers"]

_RETIRE_SECONDS = 10.0
"""The longest ``join()`` waits for the pool's idle workers to exit."""


class Place:
    """A call's (a stream's) place among the ``max_workers``, and the worker it holds."""

    __slots__ = ("failure", "given", "worker")

    def __init__(self) -> None:
        self.worker: Any = None
        self.given = anyio.Event()  # set once it has a worker, or a failure
        self.failure: BaseException | None = None


class Workers:
    """The actors of one pool, made from ``worker_class`` (``None`` until Ray runs, and once
    the pool has ended)."""

    def __init__(self, ray: Any, sys_path: tuple[str, ...]) -> None:
        self._ray = ray
        self._sys_path = sys_path
        self.worker_class: Any = None
        self.idle: list[Any] = []
        self.busy: set[Place] = set()
        self._coming: set[Any] = set()  # starting
        self._waiting: deque[Place] = deque()  # calls waiting for a worker, first come first
        self.replaced = 0
        self._stopping = False

    async def wait_for(self, place: Place, capacity: int) -> None:
        """Give ``place`` an idle worker, once there is one, starting one if fewer than
        ``capacity`` live; then it is busy."""
        if self._stopping:
            raise PoolClosedError("the pool was terminated while the call waited")
        if self.idle and not self._waiting:
            place.worker = self.idle.pop()
        else:
            self._waiting.append(place)
            live = len(self.busy) + len(self._coming) + len(self.idle)
            if len(self._coming) < len(self._waiting) and live < capacity:
                self._start()
            try:
                await place.given.wait()
            except BaseException:
                if place in self._waiting:
                    self._waiting.remove(place)
                elif place.worker is not None:
                    self._hand_over(place.worker)  # given as it was cancelled: to the next
                    place.worker = None
                raise
            if place.failure is not None:
                raise place.failure
        self.busy.add(place)

    def release(self, place: Place, *, alive: bool, replace: bool) -> None:
        """The call (stream) in ``place`` has ended: its worker is idle again, or, dead (or
        killed), replaced by a new one if ``replace`` (started now, so that the next call need
        not wait for a process to start)."""
        self.busy.discard(place)
        if alive and not self._stopping:
            self._hand_over(place.worker)
            return
        self.kill(place.worker)
        if replace and self.worker_class is not None:
            self._start()
            self.replaced += 1

    def kill(self, worker: Any) -> None:
        # (Never once Ray is shut down: Ray's API would start a new one.)
        if self._ray.is_initialized():
            with contextlib.suppress(Exception):  # (dead already)
                self._ray.kill(worker, no_restart=True)

    def kill_all(self) -> None:
        """Kill every worker, and fail the calls waiting for one (the pool was terminated)."""
        self._stopping = True
        for place in self.busy:
            self.kill(place.worker)
        self.stop_idle()
        while self._waiting:
            place = self._waiting.popleft()
            place.failure = PoolClosedError("the pool was terminated while the call waited")
            place.given.set()

    async def retire(self) -> None:
        """End the idle workers and wait until they have exited (a worker holds its CPU until
        then, which the pools after this one may need), and kill those starting."""
        ends = [worker.__ray_terminate__.remote().future() for worker in self.idle]
        self.idle.clear()
        self.stop_idle()
        with anyio.CancelScope(shield=True), anyio.move_on_after(_RETIRE_SECONDS):
            for end in ends:
                await when_done(end).wait()

    def stop_idle(self) -> None:
        """Kill the idle workers, and those starting (the pool is done with them)."""
        while self.idle:
            self.kill(self.idle.pop())
        for worker in self._coming:
            self.kill(worker)

    def _hand_over(self, worker: Any) -> None:
        """An idle worker: to the call that has waited longest, else to the idle ones."""
        if self._waiting:
            place = self._waiting.popleft()
            place.worker = worker
            place.given.set()
        else:
            self.idle.append(worker)

    def _start(self) -> None:
        """Start a worker; it is idle once Ray says that it runs."""
        worker = self.worker_class.remote(self._sys_path)
        self._coming.add(worker)

        async def when_ready() -> None:
            future = worker.__ray_ready__.remote().future()
            try:
                await when_done(future).wait()
            finally:
                self._coming.discard(worker)
                started = future.done() and future.exception() is None
                if started and not self._stopping and self.worker_class is not None:
                    self._hand_over(worker)
                else:
                    self.kill(worker)
                    if future.done() and not self._stopping:
                        self._fail_waiting(future.exception())

        current_loop().spawn_detached(when_ready)

    def _fail_waiting(self, error: BaseException | None) -> None:
        """A worker could not start: fail the calls waiting, each with an error of its own."""
        while self._waiting:
            place = self._waiting.popleft()
            place.failure = BrokenWorkerError(None, None, "its start on Ray")
            place.failure.__cause__ = error
            place.given.set()
