"""``anypool.run``: calls on a default pool that belongs to the running event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, overload

from anyio.lowlevel import RunVar

from ._eventloop import at_loop_end
from ._pool import Pool

__all__ = ["run"]

P = ParamSpec("P")
T = TypeVar("T")

_default_pool: RunVar[Pool] = RunVar("anypool.default_pool")
# Keeps each event loop's end-of-loop hook alive as long as its pool.
_loop_end_hooks: RunVar[object] = RunVar("anypool.default_pool_hook")


async def _get_default_pool() -> Pool:
    try:
        return _default_pool.get()
    except LookupError:
        pass
    pool = Pool()
    _default_pool.set(pool)
    _loop_end_hooks.set(await at_loop_end(lambda: _shut_down(pool)))
    return pool


async def _shut_down(pool: Pool) -> None:
    # Every task of the loop has ended by now; what is left is idle workers to stop and reap.
    pool.close()
    await pool.join()


@overload
async def run(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


@overload
async def run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


async def run(fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
    """Run ``fn(*args, **kwargs)`` on the default pool of the running event loop.

    The default pool has :func:`anypool.cpu_count` workers and the default options of
    :class:`anypool.Pool`. It starts on first use and is shut down when the event loop ends
    (``asyncio.run``, ``anyio.run`` or ``trio.run`` returns) or at interpreter exit, whichever
    comes first. See :meth:`anypool.Pool.run` for what this promises and raises.
    """
    pool = await _get_default_pool()
    return await pool.run(fn, *args, **kwargs)


run.__module__ = "anypool"
