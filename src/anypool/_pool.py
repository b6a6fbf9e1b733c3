"""``Pool``: the public face of a pool. It checks what it is given, describes the work, and
hands it to its backend (``backends/``), which runs it: this module never touches a process."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, overload

import anyio

from ._arguments import check_callable, check_count, check_flag
from ._channel import Channel
from ._errors import raised_in_worker
from ._eventloop import current_loop
from ._map import MapResults
from ._stats import PoolStats
from ._stream import StreamResults
from .backends._base import Backend, Call, Feature
from .backends.local.backend import START_METHODS, LocalBackend
from .backends.local.child.duplex import AsyncChannelEnd, ChannelEnd

__all__ = ["START_METHODS", "CallOptions", "Pool", "PoolStats", "PoolView"]

# The local backend's options, which another backend refuses, with their defaults.
_LOCAL_DEFAULTS: dict[str, Any] = {
    "start_method": None,
    "initializer": None,
    "initargs": (),
    "max_tasks_per_worker": None,
    "idle_timeout": 300.0,
    "kill_grace": 1.0,
}

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A")
# What a channel's function receives from the parent, and what it sends back.
ToWorker = TypeVar("ToWorker")
FromWorker = TypeVar("FromWorker")


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """How a pool view runs calls (see :meth:`PoolView.with_options`), and which of the
    options were given (``given``): a method that an option given does not apply to refuses
    it, rather than ignore it."""

    kill_on_cancel: bool = True
    buffer: int = 64
    given: frozenset[str] = frozenset()

    def check(self, method: str) -> None:
        """Raise ``ValueError`` naming an option given that ``method`` would ignore."""
        for name in sorted(self.given):
            applies = _APPLIES[name]
            if method not in applies:
                raise ValueError(
                    f"{name} was given by with_options(), and pool.{method} does not take it "
                    f"(it applies to {' and '.join(f'pool.{other}' for other in applies)})"
                )


_APPLIES = {"kill_on_cancel": ("run", "map"), "buffer": ("stream", "open_channel")}
"""The methods each call option applies to."""


class PoolView:
    """A pool's calls, with call options of their own (see :meth:`with_options`): the same
    workers as its :class:`Pool`, whose lifecycle (``close``, ``join``, ``terminate``,
    ``async with``) belongs to the pool alone. A :class:`Pool` is its own view."""

    def __init__(self, backend: Backend, options: CallOptions) -> None:
        self._backend = backend
        self._options = options

    @property
    def backend(self) -> Backend:
        """What runs this pool's calls."""
        return self._backend

    @property
    def max_workers(self) -> int:
        return self._backend.capacity

    @property
    def start_method(self) -> str:
        """How the local backend starts workers.

        Raises:
            AttributeError: the pool has another backend.
        """
        backend = self._backend
        if not isinstance(backend, LocalBackend):
            raise AttributeError(  # noqa: TRY004 (a missing attribute)
                f"a pool on the {backend.name} backend has no start method"
            )
        return backend.start_method

    @property
    def kill_grace(self) -> float:
        return self._backend.kill_grace

    def with_options(
        self, *, kill_on_cancel: bool | None = None, buffer: int | None = None
    ) -> PoolView:
        """The pool's calls with other options: the same workers, no lifecycle of their own
        (``close``, ``join``, ``terminate`` and ``async with`` are the pool's). An option left
        out keeps its current value. A method that an option given does not apply to raises
        ``ValueError`` rather than ignore it.

        Args:
            kill_on_cancel: ``True`` (the default): a cancelled call's worker is terminated.
                ``False``: the caller is cancelled at once, the worker finishes the call, the
                result is discarded and the worker is reused. (:meth:`run` and :meth:`map`.)
            buffer: how many items a generator run by :meth:`stream` may make ahead of the
                items its consumer took, and how many items each side of a channel from
                :meth:`open_channel` may send ahead of the other side (default 64).

        Options travel apart from the arguments of ``run`` and ``stream``, so they never clash
        with the keyword arguments of the function called.
        """
        changes: dict[str, Any] = {}
        if kill_on_cancel is not None:
            changes["kill_on_cancel"] = check_flag("kill_on_cancel", kill_on_cancel)
            if not kill_on_cancel:
                self._backend.require(Feature.FINISH_ON_CANCEL)
        if buffer is not None:
            changes["buffer"] = check_count("buffer", buffer)
        options = self._options
        given = options.given.union(changes)
        return PoolView(self._backend, dataclasses.replace(options, **changes, given=given))

    @overload
    async def run(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def run(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` in a worker and return its result.

        ``fn`` may be any picklable callable (lambdas and closures included); if it is an
        ``async def``, it runs on an event loop in the worker (trio if the caller runs trio, else
        asyncio).

        This is a checkpoint, and a call from a task whose cancellation is pending is never sent.
        If the calling task is cancelled while the call runs, the worker is terminated (SIGTERM,
        then SIGKILL after ``kill_grace``) and reaped before the cancellation propagates; see
        :meth:`with_options` to let the worker finish instead.

        Raises:
            Exception: what ``fn`` raised, as itself, with a :class:`RemoteTraceback` as its
                ``__cause__``.
            RemoteError: ``fn`` raised something that cannot be delivered as itself.
            BrokenWorkerError: the worker died during the call.
            SerializationError: an argument or the result could not be pickled.
            InitializerError: the pool's initializer raised in the new worker.
            PoolClosedError: the pool is closed, or was terminated during the call.
        """
        # Not a full checkpoint: the wait for the worker yields to the event loop anyway.
        loop = current_loop()
        await loop.checkpoint_if_cancelled()
        check_callable("fn", fn)
        options = self._options
        if options.given:  # (the hot path checks nothing more when none was given)
            options.check("run")
        backend = self._backend
        backend.check_open()
        call = Call(fn, args, kwargs, loop.name)
        try:
            return await backend.call(call, kill_on_cancel=options.kill_on_cancel)
        except Exception as error:
            if not raised_in_worker(error):
                raise
            # What happened is told by its cause, the worker's traceback: anypool's frames
            # that carried it here would only stand between the caller's line and that.
            raise error.with_traceback(None) from error.__cause__

    # The result type follows fn (awaited for an `async def`) and return_exceptions (an item's
    # exception in the place of its result); the items must be what fn takes.
    @overload
    def map(
        self,
        fn: Callable[[A], Awaitable[T]],
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        max_in_flight: int | None = None,
        return_exceptions: Literal[False] = False,
        progress: bool | Callable[[int, int | None], object] | None = None,
    ) -> MapResults[T]: ...

    @overload
    def map(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        max_in_flight: int | None = None,
        return_exceptions: Literal[False] = False,
        progress: bool | Callable[[int, int | None], object] | None = None,
    ) -> MapResults[T]: ...

    @overload
    def map(
        self,
        fn: Callable[[A], Awaitable[T]],
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        max_in_flight: int | None = None,
        return_exceptions: bool,
        progress: bool | Callable[[int, int | None], object] | None = None,
    ) -> MapResults[T | BaseException]: ...

    @overload
    def map(
        self,
        fn: Callable[[A], T],
        iterable: Iterable[A] | AsyncIterable[A],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        max_in_flight: int | None = None,
        return_exceptions: bool,
        progress: bool | Callable[[int, int | None], object] | None = None,
    ) -> MapResults[T | BaseException]: ...

    def map(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool = True,
        chunksize: int | Literal["auto"] = 1,
        max_in_flight: int | None = None,
        return_exceptions: bool = False,
        progress: bool | Callable[[int, int | None], object] | None = None,
    ) -> MapResults[Any]:
        """Call ``fn(item)`` for each item of ``iterable`` on the workers; iterate the results.

        Use ``async for result in pool.map(...)``, or ``async with pool.map(...) as results``
        to be sure the calls still running are cancelled when the block is left early.

        Args:
            fn: as for :meth:`run`; called with one item. The results are what it returns
                (for an ``async def``, what it returns once awaited in the worker).
            iterable: a sync or async iterable of what ``fn`` takes, consumed lazily,
                possibly endless.
            ordered: results in input order (``True``) or as chunks finish (``False``).
            chunksize: items sent to a worker per call, or ``"auto"`` to size chunks from the
                measured time per item, so that tiny functions run at full speed.
            max_in_flight: at most this many items are taken from ``iterable`` ahead of the
                results handed out. Default: three chunks per worker.
            return_exceptions: yield the exception an item raised instead of raising it (the
                results are then typed ``T | BaseException``).
            progress: ``True`` for a tqdm progress bar (``anypool[progress]``), or a callable
                called as ``progress(done, total)``; ``total`` is ``None`` without ``len()``.

        An exception raised for an item (the item's own, or a :class:`BrokenWorkerError` for the
        items of a worker that died) is raised from the iteration, in order, and the calls still
        running are cancelled; so is an exception raised by ``iterable`` itself.
        """
        self._options.check("map")
        return MapResults(
            self._backend,
            self._options,
            fn,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            max_in_flight=max_in_flight,
            return_exceptions=return_exceptions,
            progress=progress,
        )

    @overload
    def stream(
        self, fn: Callable[P, AsyncIterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamResults[T]: ...

    @overload
    def stream(
        self, fn: Callable[P, Iterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamResults[T]: ...

    def stream(
        self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamResults[Any]:
        """Run the generator ``fn(*args, **kwargs)`` in a worker; iterate its items as it
        yields them.

        ``fn`` may be a generator function or an async generator function. Use ``async for
        item in pool.stream(...)``, or ``async with pool.stream(...) as items``. The generator
        is not resumed while ``buffer`` items (see :meth:`with_options`) wait for the consumer.
        Leaving early, :meth:`StreamResults.aclose`, or a cancellation closes the generator in
        the worker (``GeneratorExit``); a worker whose generator does not finish within
        ``kill_grace`` is killed. The generator's exception is raised after the items before it.
        """
        check_callable("fn", fn)
        self._backend.require(Feature.STREAM)
        self._options.check("stream")
        return StreamResults(self._backend, self._options, fn, args, kwargs)

    # The parent's end is the worker's the other way round: what the function sends, it
    # receives.
    @overload
    def open_channel(
        self,
        fn: Callable[Concatenate[AsyncChannelEnd[FromWorker, ToWorker], P], Awaitable[object]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Channel[ToWorker, FromWorker]: ...

    @overload
    def open_channel(
        self,
        fn: Callable[Concatenate[ChannelEnd[FromWorker, ToWorker], P], object],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Channel[ToWorker, FromWorker]: ...

    def open_channel(
        self, fn: Callable[Concatenate[Any, P], object], /, *args: P.args, **kwargs: P.kwargs
    ) -> Channel[Any, Any]:
        """Call ``fn(channel_end, *args, **kwargs)`` in a worker, with a two-way channel to it.

        Use ``async with pool.open_channel(fn, ...) as channel``: the block starts the worker,
        and leaving it closes the channel (see :meth:`Channel.aclose`), or kills the worker if
        it is left by an exception or a cancellation, as for :meth:`run`.

        ``channel_end`` is a :class:`ChannelEnd` (blocking ``send``, ``recv``, ``poll`` and
        iteration, as an end of :func:`multiprocessing.Pipe`), or an :class:`AsyncChannelEnd`
        (the same, awaitable) when ``fn`` is an ``async def``. Each direction holds at most
        ``buffer`` items (see :meth:`with_options`) that the other side has not taken.

        The channel's types follow ``fn``'s first parameter: for a ``ChannelEnd[X, Y]`` (the
        function sends ``X`` and receives ``Y``) the channel is a ``Channel[Y, X]``.
        """
        check_callable("fn", fn)
        self._backend.require(Feature.CHANNEL)
        self._options.check("open_channel")
        return Channel(self._backend, self._options, fn, args, kwargs)

    def stats(self) -> PoolStats:
        """Current counts of workers and calls."""
        return self._backend.stats()

    def __repr__(self) -> str:
        backend = self._backend
        return f"<anypool.{type(self).__name__} {backend.state} {backend.describe()}>"


class Pool(PoolView):
    """A pool of worker processes that async code awaits.

    Args:
        max_workers: the most worker processes at once; default :func:`anypool.cpu_count`.
        start_method: how workers start: ``"forkserver"`` (the default on Linux), ``"spawn"``
            or ``"fork"``, as in :mod:`multiprocessing`.
        initializer: called as ``initializer(*initargs)`` once in each worker before its first
            call. If it raises, that call raises :class:`InitializerError`.
        initargs: the arguments of ``initializer``.
        max_tasks_per_worker: replace a worker after this many calls; ``None`` for never.
        idle_timeout: a worker idle for this many seconds exits; ``None`` (or ``math.inf``)
            for never.
        kill_grace: seconds between SIGTERM and SIGKILL when a worker is stopped.
        backend: what runs the calls; default: worker processes on this machine, with the
            options above (:class:`anypool.backends.local.backend.LocalBackend`). Another
            backend takes its options itself, and the pool refuses those above.

    Workers start when calls need them. Use the pool as ``async with Pool() as pool:``; leaving
    the block normally waits for the calls it accepted (:meth:`close` then :meth:`join`),
    leaving it with an exception or a cancellation stops everything (:meth:`terminate`). Either
    way no worker process remains afterwards.

    A pool belongs to one event loop at a time and is not thread-safe.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_worker: int | None = None,
        idle_timeout: float | None = 300.0,
        kill_grace: float = 1.0,
        backend: Backend | None = None,
    ) -> None:
        if backend is None:
            backend = LocalBackend(
                max_workers,
                start_method=start_method,
                initializer=initializer,
                initargs=initargs,
                max_tasks_per_worker=max_tasks_per_worker,
                idle_timeout=idle_timeout,
                kill_grace=kill_grace,
            )
        elif not isinstance(backend, Backend):
            raise TypeError(f"backend must be an anypool backend or None, not {backend!r}")
        else:
            passed = {
                "start_method": start_method,
                "initializer": initializer,
                "initargs": initargs,
                "max_tasks_per_worker": max_tasks_per_worker,
                "idle_timeout": idle_timeout,
                "kill_grace": kill_grace,
            }
            given = [name for name, default in _LOCAL_DEFAULTS.items() if passed[name] != default]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: options of the pool's default backend, which do not "
                    f"apply to the {backend.name} backend given (it takes its own options)"
                )
            if max_workers is not None:
                backend.set_max_workers(check_count("max_workers", max_workers, optional=True))
        super().__init__(backend, CallOptions())

    def close(self) -> None:
        """Accept no more calls. Calls already accepted go on; see :meth:`join`."""
        self._backend.close()

    async def join(self) -> None:
        """Wait for every accepted call to finish, then stop the workers.

        Raises:
            RuntimeError: the pool was not closed or terminated first.
        """
        backend = self._backend
        if backend.state == "open":
            raise RuntimeError("close() or terminate() the pool before join()")
        await backend.join()

    async def terminate(self) -> None:
        """Stop every worker now. Running and waiting calls raise :class:`PoolClosedError`.

        Shielded from cancellation: when this returns, no worker process remains.
        """
        with anyio.CancelScope(shield=True):
            await self._backend.terminate()

    async def __aenter__(self) -> Pool:
        """Enter the pool's block: see the class's description.

        Raises:
            PoolClosedError: the pool was closed or terminated already.
        """
        self._backend.check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self.terminate()
            return
        self.close()
        try:
            await self.join()
        except BaseException:
            await self.terminate()
            raise


Pool.__module__ = PoolView.__module__ = "anypool"
