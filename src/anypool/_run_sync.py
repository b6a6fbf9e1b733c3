"""``anypool.run_sync``: ``anyio.to_process.run_sync`` and ``trio_parallel.run_sync``, on
anypool's default pool, so that their users switch by changing the import."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, TypeVar, overload

import anyio

from ._arguments import check_flag
from ._default_pool import run
from ._eventloop import checkpoint_if_cancelled, current_library

if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:
    from typing_extensions import TypeVarTuple, Unpack

__all__ = ["run_sync"]

# The arguments are positional only, as in the two functions this stands for: keyword arguments
# of fn would clash with the options (which is also why this is not a ParamSpec).
Ts = TypeVarTuple("Ts")
T = TypeVar("T")


@overload
async def run_sync(
    fn: Callable[[Unpack[Ts]], Awaitable[T]],
    /,
    *args: Unpack[Ts],
    cancellable: bool = False,
    kill_on_cancel: bool = False,
    limiter: AbstractAsyncContextManager[object] | None = None,
) -> T: ...


@overload
async def run_sync(
    fn: Callable[[Unpack[Ts]], T],
    /,
    *args: Unpack[Ts],
    cancellable: bool = False,
    kill_on_cancel: bool = False,
    limiter: AbstractAsyncContextManager[object] | None = None,
) -> T: ...


async def run_sync(
    fn: Callable[..., Any],
    /,
    *args: Unpack[Ts],
    cancellable: bool = False,
    kill_on_cancel: bool = False,
    limiter: AbstractAsyncContextManager[object] | None = None,
) -> Any:
    """Run ``fn(*args)`` in a worker of the default pool (see :func:`anypool.run`) and return
    its result: ``anyio.to_process.run_sync`` and ``trio_parallel.run_sync``, with their
    options, their defaults and their behaviour on cancellation.

    Args:
        fn: any picklable callable, as for :meth:`Pool.run` (an ``async def`` too).
        args: its positional arguments (use :func:`functools.partial` for keyword ones).
        cancellable: anyio's name for ``kill_on_cancel`` (trio-parallel's alias of it);
            either being ``True`` makes the call cancellable.
        kill_on_cancel: ``False`` (the default, as in both libraries): a cancellation of the
            caller waits for the call to end, shielded. Under an anyio or trio cancel scope the
            result is then returned, and the cancellation is raised at the caller's next
            checkpoint; under asyncio's ``task.cancel()`` (``asyncio.timeout``,
            ``asyncio.wait_for``), the cancellation is raised once the call has ended, and its
            outcome is dropped. ``True``: a cancellation terminates the worker running the call
            (SIGTERM, then SIGKILL after ``kill_grace``), reaped before the cancellation leaves
            this, as for :meth:`Pool.run`.
        limiter: an async context manager held for the call, a ``CapacityLimiter`` of anyio
            or trio (``limiter.total_tokens`` bounds the calls running at once); a call waiting
            for it can be cancelled whatever ``kill_on_cancel`` says. Default: none, but the
            default pool's ``max_workers`` (:func:`anypool.cpu_count`), which bounds the calls
            running at once likewise.

    Raises:
        Exception: what ``fn`` raised, as itself, with a :class:`RemoteTraceback` as its
            ``__cause__``; the other errors of :meth:`Pool.run` (:class:`BrokenWorkerError`
            where anyio raises ``BrokenWorkerProcess`` and trio-parallel its own
            ``BrokenWorkerError``).
        TypeError: ``cancellable`` or ``kill_on_cancel`` is not a bool.
    """
    kills = check_flag("cancellable", cancellable) | check_flag("kill_on_cancel", kill_on_cancel)
    # As in both libraries, a caller cancelled already starts nothing (the shield below would
    # let the call run to its end).
    await checkpoint_if_cancelled()
    async with limiter if limiter is not None else nullcontext():
        if kills:
            return await run(fn, *args)
        # A shield holds off the cancellations of anyio's and trio's cancel scopes.
        with anyio.CancelScope(shield=True):
            if current_library() == "trio":
                return await run(fn, *args)
            return await _run_to_the_end(fn, args)


async def _run_to_the_end(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    # On asyncio, task.cancel() (asyncio.timeout, asyncio.wait_for) gets through an anyio
    # shield: the call runs in a task of its own, which nobody cancels, and a cancellation of
    # this task waits for it to end before it is raised (asyncio.timeout needs it raised).
    call = asyncio.ensure_future(run(fn, *args))
    cancellation: asyncio.CancelledError | None = None
    while not call.done():
        try:
            await asyncio.wait([call])
        except asyncio.CancelledError as cancelled:
            cancellation = cancelled
    if cancellation is not None:
        if not call.cancelled():
            # The outcome is dropped: retrieved, so that asyncio does not report it as lost.
            call.exception()
        raise cancellation
    return call.result()


run_sync.__module__ = "anypool"
