"""``anypool.Executor``: a :class:`concurrent.futures.Executor` whose cancellations kill the
worker running the call, for code written around ``executor.submit`` and
``loop.run_in_executor``.

It hosts a :class:`Pool` on an asyncio event loop in a thread of its own. A call's
``concurrent.futures.Future`` stays pending until its result is in, so that ``Future.cancel()``
succeeds while the call runs (asyncio calls it when the task awaiting ``run_in_executor``, or
``asyncio.wait_for``, is cancelled); cancelling the future cancels the call on the pool, which
kills its worker.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._arguments import check_callable, check_count
from ._chunks import call_chunk
from ._errors import PoolClosedError
from ._pool import Pool

if TYPE_CHECKING:
    import multiprocessing.context

    from .backends._base import Backend

__all__ = ["Executor"]

P = ParamSpec("P")
T = TypeVar("T")

_Future = concurrent.futures.Future


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` on a pool of worker processes, to use in place of
    :class:`~concurrent.futures.ProcessPoolExecutor`.

    Unlike ``ProcessPoolExecutor``, cancelling a call stops it: ``future.cancel()`` succeeds
    until the call's result is in, waiting or running, and cancels the call; a running call's
    worker is terminated (SIGTERM, then SIGKILL after ``kill_grace``) and replaced. So the
    asyncio task awaiting ``loop.run_in_executor(executor, fn, ...)``, when cancelled or timed
    out (``asyncio.wait_for``, ``asyncio.timeout``), stops the call too, and
    :meth:`map`'s ``timeout`` stops the calls it gives up on.

    Args:
        max_workers: the most worker processes at once; default :func:`anypool.cpu_count`.
        mp_context: a :mod:`multiprocessing` context, as for ``ProcessPoolExecutor``: only its
            start method is used (``mp_context.get_start_method()``). Or pass ``start_method``.
        initializer: called as ``initializer(*initargs)`` once in each worker before its first
            call. If it raises, that call fails with :class:`InitializerError`, and the executor
            goes on (``ProcessPoolExecutor`` breaks for good instead).
        initargs: the arguments of ``initializer``.
        max_tasks_per_child: ``ProcessPoolExecutor``'s name for ``max_tasks_per_worker``.
        start_method: as for :class:`Pool`.
        max_tasks_per_worker: as for :class:`Pool`.
        idle_timeout: as for :class:`Pool`.
        kill_grace: as for :class:`Pool`.
        backend: as for :class:`Pool`.

    Raises:
        TypeError: both ``mp_context`` and ``start_method``, or both ``max_tasks_per_child``
            and ``max_tasks_per_worker``, were given; or as :class:`Pool` raises.
        ValueError: as :class:`Pool` raises for a bad option.

    What differs from ``ProcessPoolExecutor``, besides cancellation:

    - a future is never in the running state: ``future.running()`` is ``False`` until it is
      done;
    - a worker that dies fails only its own call, with :class:`BrokenWorkerError`, and the
      executor goes on (no ``BrokenProcessPool``);
    - errors are those of :meth:`Pool.run`: the function's own exception, as itself, with a
      :class:`RemoteTraceback` as its ``__cause__``; :meth:`submit` after :meth:`shutdown`
      raises :class:`PoolClosedError` (a ``RuntimeError``);
    - ``fn`` may be an ``async def``: it runs on an event loop in the worker.

    Every process it starts is reaped by :meth:`shutdown` (``with Executor() as executor:``
    calls it), or at interpreter exit for an executor never shut down; its thread ends then.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        start_method: str | None = None,
        max_tasks_per_worker: int | None = None,
        idle_timeout: float | None = 300.0,
        kill_grace: float = 1.0,
        backend: Backend | None = None,
    ) -> None:
        if mp_context is not None:
            if start_method is not None:
                raise TypeError("pass mp_context or start_method, not both")
            start_method = mp_context.get_start_method()
        if max_tasks_per_child is not None:
            if max_tasks_per_worker is not None:
                raise TypeError("pass max_tasks_per_child or max_tasks_per_worker, not both")
            max_tasks_per_worker = max_tasks_per_child
        # Made here, not in the loop's thread, so that a bad option raises here.
        self._pool = Pool(
            max_workers,
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_worker,
            idle_timeout=idle_timeout,
            kill_grace=kill_grace,
            backend=backend,
        )
        # Guards _shut_down, the start of the loop and _waiting: see submit() and shutdown().
        self._lock = threading.Lock()
        self._shut_down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._waiting: set[_Future[Any]] = set()
        """The calls that have no worker yet: what ``shutdown(cancel_futures=True)`` cancels."""
        # The rest belongs to the loop's thread (asyncio's primitives bind to a loop on first
        # use, not here).
        self._calls: dict[_Future[Any], asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(self._pool.max_workers)
        self._shutdown_requested = asyncio.Event()

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; its future.

        The future stays pending until the call's outcome is in. ``future.cancel()`` succeeds
        until then: a call that waits for a worker never starts, a running call's worker is
        terminated. Its exception, if it fails, is what :meth:`Pool.run` raises.

        Raises:
            TypeError: ``fn`` is not callable.
            PoolClosedError: :meth:`shutdown` was called.
        """
        check_callable("fn", fn)
        future: _Future[T] = _Future()
        future.add_done_callback(self._forward_cancel)
        with self._lock:
            if self._shut_down:
                raise PoolClosedError("cannot schedule new futures after shutdown")
            loop = self._running_loop()
            self._waiting.add(future)
            # Under the lock: shutdown() schedules its end of the loop after this, and the loop
            # runs callbacks in the order they were scheduled, so it sees every call submitted
            # before it.
            loop.call_soon_threadsafe(self._start_call, future, fn, args, kwargs)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """``fn(*args)`` for each ``args`` of ``zip(*iterables)``: an iterator of the results,
        in order, as for :meth:`concurrent.futures.Executor.map`.

        Every call is submitted at once. The iterator raises the exception a call raised when it
        gets to that call, and :class:`concurrent.futures.TimeoutError` (``TimeoutError`` from
        Python 3.11) when a result is not in ``timeout`` seconds after ``map`` was called;
        either way, and when the iterator is closed early, the calls it had not delivered are
        cancelled: their workers are killed.

        Args:
            chunksize: items sent to a worker per call, as for ``ProcessPoolExecutor``.

        Raises:
            TypeError, ValueError: ``chunksize`` is not an int of at least 1.
        """
        chunksize = check_count("chunksize", chunksize)
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = super().map(
            functools.partial(call_chunk, fn),
            _batched(zip(*iterables, strict=False), chunksize),
            timeout=timeout,
        )
        return itertools.chain.from_iterable(chunks)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; stop the workers once the calls submitted have ended.

        Args:
            wait: return once every call has ended, every worker process has been reaped and
                the executor's thread has ended; else return at once, and let that happen
                afterwards.
            cancel_futures: cancel the calls that wait for a worker; the calls running go on.
                Their futures are cancelled when this returns.

        Calling it again is harmless (and ``wait=True`` then waits).
        """
        with self._lock:
            self._shut_down = True
            loop, thread = self._loop, self._thread
            cancelled = list(self._waiting) if cancel_futures else []
            if cancel_futures:
                # Taken from _waiting under the lock: a call given a worker meanwhile (which
                # also leaves _waiting under the lock, see _run_call) is not cancelled.
                self._waiting.clear()
        for future in cancelled:
            future.cancel()
        if loop is None or thread is None:
            return
        # (A loop closed already was ended by an earlier call.)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._shutdown_requested.set)
        # From the loop's own thread (a future's done-callback), waiting would wait forever.
        if wait and thread is not threading.current_thread():
            thread.join()

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else "open"
        return f"<anypool.Executor {state} {self._pool.backend.describe()}>"

    # --- in the caller's thread ---------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The executor's loop, running in its thread, which the first call starts."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._serve_in_thread, name="anypool.Executor", daemon=True
            )
            self._thread.start()
            _unfinished.add(self)
        return self._loop

    def _forward_cancel(self, future: _Future[Any]) -> None:
        # Runs in the thread that completed or cancelled the future, when it did. Cancelled:
        # cancel the call too. The call's task is there by the time this callback runs in the
        # loop (the loop runs callbacks in order, and submit() scheduled the start first).
        if future.cancelled():
            assert self._loop is not None
            # (A loop closed already ran every call to its end.)
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._cancel_call, future)

    # --- in the loop's thread -----------------------------------------------------------------

    def _serve_in_thread(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        # Leaving the pool's block waits for the calls and reaps the workers (terminates them
        # if this fails).
        async with self._pool:
            await self._shutdown_requested.wait()
            # Every call submitted before shutdown() has its task by now (see submit()).
            while self._calls:
                await asyncio.wait(list(self._calls.values()))

    def _start_call(
        self,
        future: _Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if future.cancelled():
            with self._lock:
                self._waiting.discard(future)
            # (Tells concurrent.futures.wait() and as_completed(), which wait for this.)
            future.set_running_or_notify_cancel()
            return
        loop = asyncio.get_running_loop()
        self._calls[future] = loop.create_task(self._run_call(future, fn, args, kwargs))

    async def _run_call(
        self,
        future: _Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        try:
            async with self._slots:
                with self._lock:
                    given_a_worker = future in self._waiting
                    self._waiting.discard(future)
                if not given_a_worker:
                    # shutdown(cancel_futures=True) took it from _waiting, and cancels it (or
                    # has): it must not start. (cancel() again is harmless.)
                    future.cancel()
                    future.set_running_or_notify_cancel()
                    return
                result = await self._pool.run(fn, *args, **kwargs)
        except asyncio.CancelledError:
            # What cancels this task is future.cancel() (see _forward_cancel), so the future
            # is cancelled already; cancel() keeps it true should anything else ever do it.
            future.cancel()
            future.set_running_or_notify_cancel()
            raise
        except BaseException as exc:
            # A future cancelled meanwhile drops the outcome (set_running... says so).
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
        else:
            if future.set_running_or_notify_cancel():
                future.set_result(result)
        finally:
            with self._lock:
                self._waiting.discard(future)
            del self._calls[future]

    def _cancel_call(self, future: _Future[Any]) -> None:
        task = self._calls.get(future)
        if task is not None:
            task.cancel()


Executor.__module__ = "anypool"


def _batched(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[tuple[tuple[Any, ...], ...]]:
    """Tuples of ``size`` items of ``items`` (the last one shorter): ``itertools.batched``,
    which Python 3.10 lacks."""
    while chunk := tuple(itertools.islice(items, size)):
        yield chunk


# Executors whose thread runs. The thread holds its executor, so this holds them as long.
_unfinished: weakref.WeakSet[Executor] = weakref.WeakSet()


@atexit.register
def _shut_down_at_exit() -> None:
    # As concurrent.futures does for its executors: the calls submitted run to their end, then
    # the workers stop. (This runs before the local backend's own exit handler, registered
    # earlier, which would kill them.)
    for executor in list(_unfinished):
        executor.shutdown(wait=True)
