"""The little anypool needs from the event loop that anyio does not provide.

- which event loop library is running, so a worker runs an ``async def`` on the same kind;
- a task that outlives the call that started it (draining a call abandoned with
  ``kill_on_cancel=False``);
- a hook when the event loop ends, to shut down the default pool of that loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Literal

import anyio.lowlevel

__all__ = [
    "Wakeup",
    "at_loop_end",
    "checkpoint",
    "checkpoint_if_cancelled",
    "current_library",
    "spawn_detached",
]

_detached_asyncio_tasks: set[object] = set()


def current_library() -> Literal["asyncio", "trio"]:
    """The event loop library running the current task (anyio runs on these two only)."""
    return "asyncio" if asyncio._get_running_loop() is not None else "trio"


async def checkpoint() -> None:
    """What ``anyio.lowlevel.checkpoint()`` does, without looking the backend up on each call
    (it is on the path of every ``run``)."""
    if asyncio._get_running_loop() is not None:
        await asyncio.sleep(0)
    else:
        await sys.modules["trio"].lowlevel.checkpoint()


async def checkpoint_if_cancelled() -> None:
    """Raise the cancellation of the current task if one is pending; otherwise return at once.

    Cheaper than :func:`checkpoint` where a yield to the event loop follows anyway: on asyncio,
    a yield costs a whole iteration of the loop, a tenth of a call's round trip.
    """
    if asyncio._get_running_loop() is not None:
        await anyio.lowlevel.checkpoint_if_cancelled()
    else:
        await sys.modules["trio"].lowlevel.checkpoint_if_cancelled()


class Wakeup:
    """A one-shot event that one task waits for: a loop future, or a ``trio.Event``. It is
    what every call that finds all workers busy waits on, so it skips the backend lookup and
    checks of ``anyio.Event``."""

    __slots__ = ("_future", "_trio_event", "is_set")

    def __init__(self) -> None:
        loop = asyncio._get_running_loop()
        self.is_set = False
        if loop is not None:
            self._future: asyncio.Future[None] | None = loop.create_future()
        else:
            self._future = None
            self._trio_event = sys.modules["trio"].Event()

    def set(self) -> None:
        """Wake the waiting task, if any (one left asleep by :meth:`set_asleep` too);
        idempotent."""
        self.is_set = True
        if self._future is None:
            self._trio_event.set()
        elif not self._future.done():
            self._future.set_result(None)

    def set_asleep(self) -> asyncio.Future[None]:
        """On asyncio: mark the event set, but leave its task asleep until the returned future
        is resolved (or :meth:`set` is called)."""
        assert self._future is not None
        self.is_set = True
        return self._future

    async def wait(self) -> None:
        """Wait until :meth:`set` is called; return at once if it already was."""
        if self._future is None:
            # trio's Event.wait() yields to the scheduler even when the event is set.
            if not self.is_set:
                await self._trio_event.wait()
        else:
            await self._future


def spawn_detached(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn()`` in a task of its own on the current event loop.

    ``fn`` must not raise: nobody awaits it. It is cancelled when the event loop ends.
    """
    if current_library() == "trio":
        import trio

        trio.lowlevel.spawn_system_task(fn)
    else:
        task = asyncio.get_running_loop().create_task(_as_coroutine(fn))
        # The loop keeps only weak references to tasks.
        _detached_asyncio_tasks.add(task)
        task.add_done_callback(_detached_asyncio_tasks.discard)


async def _as_coroutine(fn: Callable[[], Awaitable[None]]) -> None:
    await fn()


async def at_loop_end(fn: Callable[[], Awaitable[None]]) -> object:
    """Arrange for ``fn()`` to run inside the current event loop as it ends.

    Returns an object that the caller must keep alive for as long as the hook should stay armed.
    """
    if current_library() == "trio":
        import trio

        async def wait_for_end() -> None:
            try:
                await trio.sleep_forever()
            finally:
                # System tasks are cancelled once the main task has returned.
                with trio.CancelScope(shield=True):
                    await fn()

        trio.lowlevel.spawn_system_task(wait_for_end)
        return wait_for_end
    # asyncio.run() and anyio.run() finish by closing every async generator still suspended in
    # their loop (loop.shutdown_asyncgens), while the loop can still run coroutines: a generator
    # parked at its first ``yield`` is such a hook. The loop holds it weakly, hence the return.
    hook = _run_when_closed(fn)
    await hook.asend(None)
    return hook


async def _run_when_closed(fn: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await fn()
