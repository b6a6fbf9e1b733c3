"""What a worker says about the call it runs, read in one place: the outcome, or what became of
the worker (retired, its initializer failed, died, or the pool was terminated); and the drain
of calls whose callers left without waiting for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..._errors import BrokenWorkerError, InitializerError, PoolClosedError
from ..._eventloop import spawn_detached
from ..._serialize import describe
from . import wire
from .handle import WorkerHandle
from .transport import ChannelClosed

if TYPE_CHECKING:
    from .workers import WorkerCache

__all__ = ["Retired", "drain_in_background", "lost", "reply"]


class Retired(Exception):
    """The worker retired (idle for ``idle_timeout``) before it read the call sent to it: the
    call never started, and may run on another worker."""


async def reply(
    cache: WorkerCache,
    worker: WorkerHandle,
    noun: str,
    fn: Callable[..., Any] | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, Any]:
    """The worker's next word about the call it runs (``noun`` and ``fn`` name it in errors:
    "the call to", ``f``), the queue requests it makes meanwhile answered. What every
    reader does alike is done here. ``before_stop`` is awaited before the worker is reaped
    (to stop the reader's own writes to it).

    Raises:
        Retired: the worker retired before it read the call; the caller lets it go.
        InitializerError: the pool's initializer raised; the worker is reaped.
        BrokenWorkerError: the worker died; it is reaped.
        PoolClosedError: the pool was terminated under the call; the worker is reaped.
    """
    try:
        kind, body = await worker.receive()
    except ChannelClosed:
        if before_stop is not None:
            await before_stop()
        raise await lost(cache, worker, noun, fn) from None
    if kind == wire.RETIRING:
        raise Retired
    if kind == wire.INIT_FAILED:
        if before_stop is not None:
            await before_stop()
        raise await cache.initializer_failed(worker, body)
    return kind, body


async def lost(
    cache: WorkerCache, worker: WorkerHandle, noun: str, fn: Callable[..., Any] | None = None
) -> Exception:
    """Reap a busy worker whose pipe closed under a call (see :meth:`reply`); the error
    for that call."""
    what = noun if fn is None else f"{noun} {describe(fn)}"
    # The worker is exiting (or was told to): wait for its exit status.
    exitcode = await cache.stop_busy(worker, terminate=False)
    if cache.terminated:
        return PoolClosedError(f"the pool was terminated during {what}")
    return BrokenWorkerError(worker.pid, exitcode, what, first_call=worker.calls == 0)


def drain_in_background(cache: WorkerCache, worker: WorkerHandle, calls: int = 1) -> None:
    """Let the worker finish the abandoned ``calls`` it was sent; discard their outcomes,
    then reuse the worker."""
    cache.pending.add()

    async def drain() -> None:
        try:
            for _ in range(calls):
                await reply(cache, worker, "an abandoned call")
                worker.calls += 1
        except Retired:
            # It exits without reading the calls that remain.
            cache.let_go_retired(worker)
            cache.dispatch()
        except (InitializerError, BrokenWorkerError, PoolClosedError):
            pass  # reaped
        except BaseException:
            # The event loop is ending: nobody will wait for this worker any more.
            await cache.stop_busy(worker, terminate=True)
        else:
            cache.finish(worker)
        finally:
            cache.pending.finished()

    spawn_detached(drain)
