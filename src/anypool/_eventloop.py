"""The little anypool needs from the event loop that anyio does not provide, or not fast enough,
behind one small interface chosen once per loop (:func:`current_loop`):

- which event loop library is running, so a worker runs an ``async def`` on the same kind;
- a checkpoint, and a one-shot wake-up, on the path of every call (anyio's look the backend up
  on each use);
- a task that outlives the call that started it (draining a call abandoned with
  ``kill_on_cancel=False``);
- a hook when the event loop ends, to shut down the default pool of that loop.

anyio runs on asyncio (uvloop included) and trio; anything else is refused here, by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Literal

import anyio.lowlevel

__all__ = [
    "EventLoop",
    "ThreadsafeEvent",
    "Wakeup",
    "at_loop_end",
    "checkpoint",
    "checkpoint_if_cancelled",
    "current_library",
    "current_loop",
    "spawn_detached",
    "when_done",
]


class EventLoop:
    """What anypool does differently on one event loop library."""

    name: Literal["asyncio", "trio"]

    async def checkpoint(self) -> None:
        raise NotImplementedError

    async def checkpoint_if_cancelled(self) -> None:
        raise NotImplementedError

    def spawn_detached(self, fn: Callable[[], Awaitable[None]]) -> None:
        raise NotImplementedError

    async def at_loop_end(self, fn: Callable[[], Awaitable[None]]) -> object:
        raise NotImplementedError

    def threadsafe_event(self) -> ThreadsafeEvent:
        raise NotImplementedError


class ThreadsafeEvent:
    """A one-shot event that another thread sets (an engine's done-callback), and one task of
    the loop that made it waits for: the loop's own thread-safe wake-up, no thread of ours."""

    def set_from_any_thread(self) -> None:
        raise NotImplementedError

    async def wait(self) -> None:
        raise NotImplementedError


class _AsyncioThreadsafeEvent(ThreadsafeEvent):
    # An asyncio.Event rather than a future: a wait cut short by a timeout must leave it
    # waitable again (a future awaited by a cancelled task is cancelled with it).
    __slots__ = ("_event", "_loop")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def set_from_any_thread(self) -> None:
        # (A loop closed meanwhile has nobody left to wake.)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()


class _TrioThreadsafeEvent(ThreadsafeEvent):
    __slots__ = ("_event", "_token")

    def __init__(self) -> None:
        trio: Any = sys.modules["trio"]
        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()

    def set_from_any_thread(self) -> None:
        # (A run that has ended has nobody left to wake.)
        with contextlib.suppress(RuntimeError):
            self._token.run_sync_soon(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()


class _Asyncio(EventLoop):
    name = "asyncio"

    def __init__(self) -> None:
        # The loop keeps only weak references to tasks.
        self._detached: set[asyncio.Task[None]] = set()

    async def checkpoint(self) -> None:
        await asyncio.sleep(0)

    async def checkpoint_if_cancelled(self) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()

    def spawn_detached(self, fn: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.get_running_loop().create_task(_as_coroutine(fn))
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def at_loop_end(self, fn: Callable[[], Awaitable[None]]) -> object:
        # asyncio.run() and anyio.run() finish by closing every async generator still
        # suspended in their loop (loop.shutdown_asyncgens), while the loop can still run
        # coroutines: a generator parked at its first ``yield`` is such a hook. The loop holds
        # it weakly, hence the return.
        hook = _run_when_closed(fn)
        await hook.asend(None)
        return hook

    def threadsafe_event(self) -> ThreadsafeEvent:
        return _AsyncioThreadsafeEvent()


class _Trio(EventLoop):
    name = "trio"

    async def checkpoint(self) -> None:
        await sys.modules["trio"].lowlevel.checkpoint()

    async def checkpoint_if_cancelled(self) -> None:
        await sys.modules["trio"].lowlevel.checkpoint_if_cancelled()

    def spawn_detached(self, fn: Callable[[], Awaitable[None]]) -> None:
        sys.modules["trio"].lowlevel.spawn_system_task(fn)

    async def at_loop_end(self, fn: Callable[[], Awaitable[None]]) -> object:
        trio: Any = sys.modules["trio"]

        async def wait_for_end() -> None:
            try:
                await trio.sleep_forever()
            finally:
                # System tasks are cancelled once the main task has returned.
                with trio.CancelScope(shield=True):
                    await fn()

        trio.lowlevel.spawn_system_task(wait_for_end)
        return wait_for_end

    def threadsafe_event(self) -> ThreadsafeEvent:
        return _TrioThreadsafeEvent()


_ASYNCIO = _Asyncio()
_TRIO = _Trio()


def current_loop() -> EventLoop:
    """The event loop library running the current task.

    Raises:
        RuntimeError: no asyncio or trio event loop runs in this thread.
    """
    if asyncio._get_running_loop() is not None:
        return _ASYNCIO
    # trio names itself to sniffio (which it depends on) for as long as it runs, in a
    # thread-local: cheap to read.
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None and sniffio.thread_local.name == "trio":
        return _TRIO
    raise RuntimeError(
        "anypool runs on asyncio (uvloop included) or trio, and found neither running here"
    )


def current_library() -> Literal["asyncio", "trio"]:
    """The name of the event loop library running the current task."""
    return current_loop().name


# These two return the loop's own coroutine rather than wrap it: a frame fewer on the path of
# every call.


def checkpoint() -> Awaitable[None]:
    """What ``anyio.lowlevel.checkpoint()`` does, without looking the backend up through anyio
    on each call (it is on the path of every ``run``)."""
    return current_loop().checkpoint()


def checkpoint_if_cancelled() -> Awaitable[None]:
    """Raise the cancellation of the current task if one is pending; otherwise return at once.

    Cheaper than :func:`checkpoint` where a yield to the event loop follows anyway: on asyncio,
    a yield costs a whole iteration of the loop, a tenth of a call's round trip.
    """
    return current_loop().checkpoint_if_cancelled()


def spawn_detached(fn: Callable[[], Awaitable[None]]) -> None:
    """Run ``fn()`` in a task of its own on the current event loop.

    ``fn`` must not raise: nobody awaits it. It is cancelled when the event loop ends.
    """
    current_loop().spawn_detached(fn)


def when_done(future: Any) -> ThreadsafeEvent:
    """An event set once ``future`` is done: a ``concurrent.futures.Future``, or an engine's
    future with the same ``add_done_callback`` (Ray's ``ObjectRef.future()``, Dask's
    ``Future``), whose callback may run in any thread. The one way the engines' backends wait,
    on any event loop: no thread of ours, no polling."""
    event = current_loop().threadsafe_event()
    future.add_done_callback(lambda _: event.set_from_any_thread())
    return event


async def at_loop_end(fn: Callable[[], Awaitable[None]]) -> object:
    """Arrange for ``fn()`` to run inside the current event loop as it ends.

    Returns an object that the caller must keep alive for as long as the hook should stay armed.
    """
    return await current_loop().at_loop_end(fn)


class Wakeup:
    """A one-shot event that one task waits for: a loop future, or a ``trio.Event``. It is
    what every call that finds all workers busy waits on, so it skips the backend lookup and
    checks of ``anyio.Event``."""

    __slots__ = ("_future", "_trio_event", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        # (Made for a call under way, whose loop is known to be one of the two.)
        loop = asyncio._get_running_loop()
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


async def _as_coroutine(fn: Callable[[], Awaitable[None]]) -> None:
    await fn()


async def _run_when_closed(fn: Callable[[], Awaitable[None]]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await fn()
