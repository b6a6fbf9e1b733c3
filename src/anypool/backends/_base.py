"""The protocol between a pool and what runs its calls: everything the front ends (``Pool.run``,
``map``, ``stream``, ``open_channel``, ``Queue``) need from an executor, and nothing else.

A front end describes the work (a :class:`Call`, or a map's chunks through a
:class:`ChunkFeed`) and hands it to the pool's :class:`Backend`, which runs it where it runs
things (worker processes on this machine: ``backends.local``) and hands back the outcome as
the caller is to see it: a result, or the exception to raise. Everything about processes,
pipes, signals and send-ahead stays behind this line; so does counting what :class:`PoolStats`
reports.

A backend that cannot do something declares it in :attr:`Backend.unsupported`; the front end
then raises :class:`UnsupportedError` naming the feature and the backend, before any work
starts.

Imported by front ends and backends only: workers never import it.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import enum
import itertools
import os
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import anyio

from .._errors import PoolClosedError, UnsupportedError
from .._eventloop import current_library
from .._serialize import Payload, dumps_call_arguments, load_error, load_result
from ._execution import RESULT, apply_to_chunk

if TYPE_CHECKING:
    from collections import deque

    from anyio.abc import TaskGroup

    from .._stats import CallCounters, PoolStats

__all__ = [
    "Backend",
    "Call",
    "ChannelEvent",
    "ChannelSession",
    "ChunkFeed",
    "ChunkRunner",
    "Feature",
    "PendingCalls",
    "QueueEndpoint",
    "QueueStatus",
    "StreamSession",
    "SubmittedChunks",
    "Submitter",
    "deliver",
    "find_queue",
    "pickled_chunk",
    "pickling_for",
    "register_queue",
    "require_while_pickling",
]


class Feature(enum.Enum):
    """What a backend may declare it cannot do (see :attr:`Backend.unsupported`)."""

    STREAM = "pool.stream"
    CHANNEL = "pool.open_channel"
    QUEUE = "anypool.Queue"
    FINISH_ON_CANCEL = "kill_on_cancel=False"


class Call:
    """One call of ``fn(*args, **kwargs)`` as a front end hands it to a backend.

    ``event_loop`` is the caller's event loop library: a coroutine returned by ``fn`` runs on
    the same kind in the worker.
    """

    __slots__ = ("args", "event_loop", "fn", "kwargs")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        event_loop: Literal["asyncio", "trio"],
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.event_loop = event_loop


class Chunk:
    """Items of a map taken from its input, and what the backend made of their call
    (:meth:`Backend.pack_chunk`): ``packed`` is the backend's, ``size`` its byte count."""

    __slots__ = ("index", "items", "packed", "size")

    def __init__(self, index: int, items: int, packed: Any, size: int) -> None:
        self.index = index
        self.items = items
        self.packed = packed
        self.size = size


class ChunkFeed(Protocol):
    """What a map offers the backend that runs its chunks."""

    to_run: deque[Chunk]
    """Chunks taken from the input that no worker was given yet, in order. A backend takes
    them from the left, and puts back on the left, in order, those it could not start."""

    closed: bool
    """The consumer is gone: start nothing more."""

    fn: Callable[[Any], Any]
    """The function mapped."""

    def chunk_done(
        self, chunk: Chunk, results: list[Any], failures: list[int], seconds: float
    ) -> None:
        """The chunk ran: its results (at the positions in ``failures``, a pickled
        exception); ``seconds``: how long it ran in the worker."""

    def chunk_failed(self, chunk: Chunk, error: BaseException) -> None:
        """The chunk as a whole failed (its worker died, it could not be unpickled...)."""


class ChunkRunner(abc.ABC):
    """Runs a map's chunks as they become ready (see :meth:`Backend.run_chunks`)."""

    @abc.abstractmethod
    def more(self) -> None:
        """Chunks were added to the feed: start running them, as the backend allows."""


class StreamSession(abc.ABC):
    """A generator running on a backend (see :meth:`Backend.open_stream`)."""

    @abc.abstractmethod
    async def next(self) -> Any:
        """The next item, once the generator yields it; ``StopAsyncIteration`` once it
        returned, or the exception it raised. A cancellation closes the generator."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the generator early (``GeneratorExit`` where it runs); stop its worker if it
        does not finish within the pool's ``kill_grace``. Idempotent; shielded."""


ChannelEvent = tuple[Literal["item", "credit", "end"], Any]
"""What :meth:`ChannelSession.read` returns: ``("item", payload)``, ``("credit", count)``, or
``("end", (value, error))`` once the function returned (``error`` is ``None``), raised, or
its worker is gone (the error says how)."""


class ChannelSession(abc.ABC):
    """A function running on a backend with a two-way channel to it (see
    :meth:`Backend.open_channel`). Messages are ``"item"`` (a pickled item), ``"credit"`` (a
    count of items taken), ``"eof"`` (nothing more will be sent) and ``"close"`` (the parent
    takes and sends nothing more)."""

    @property
    @abc.abstractmethod
    def broken(self) -> bool:
        """Whether a write was cut short part-way: nothing more can be sent."""

    @abc.abstractmethod
    async def write(self, kind: Literal["item", "credit", "eof", "close"], payload: Any) -> None:
        """Send one message.

        Raises:
            EOFError: the function's end is gone; :meth:`read` will say how it ended.
            BrokenPipeError: this write, or an earlier one, was cut short part-way.
        """

    @abc.abstractmethod
    async def read(self) -> ChannelEvent:
        """The next event. After ``"end"``, the session is over: its worker was handed back
        or stopped, and the call counted."""

    @abc.abstractmethod
    def end_on_kill(self) -> None:
        """The end that comes next is the caller's doing (a kill): count it cancelled."""

    @abc.abstractmethod
    def interrupt(self, *, now: bool) -> None:
        """Ask the function's worker to stop: politely (SIGTERM), or ``now`` (SIGKILL). Its end
        then comes through :meth:`read`."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop the function's worker and wait until it is gone, counting the call cancelled:
        for when nobody reads the session any more. Shielded."""

    @abc.abstractmethod
    def writing(self, begun: bool) -> None:
        """A write of the caller's begins (``True``) or ends: the worker is handed back only
        once none is under way, so that no later call gets its message."""


class Backend(abc.ABC):
    """What runs a pool's calls. One pool owns one backend, for its whole life."""

    name: ClassVar[str]
    """How errors and reprs name the backend, e.g. ``"local"``."""

    unsupported: ClassVar[frozenset[Feature]] = frozenset()
    """What this backend cannot do: the front ends refuse it with :class:`UnsupportedError`."""

    instead: ClassVar[dict[Feature, str]] = {}
    """What to use instead of an unsupported feature, said in the error."""

    def __init__(self) -> None:
        # The lifecycle every backend shares: close() stops admission, terminate() everything;
        # a pool is not usable from a process forked from its owner.
        self._closed = False
        self._terminated = False
        self._owner_pid = os.getpid()

    def require(self, feature: Feature) -> None:
        """Raise :class:`UnsupportedError` if this backend cannot do ``feature``."""
        if feature in self.unsupported:
            hint = self.instead.get(feature)
            raise UnsupportedError(
                f"the {self.name} backend does not support {feature.value}"
                + (f": {hint}" if hint else "")
            )

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many calls may run at once: the pool's ``max_workers``."""

    def set_max_workers(self, max_workers: int) -> None:
        """Run at most ``max_workers`` calls at once (``Pool(max_workers=..., backend=...)``).

        Raises:
            TypeError: this backend takes its size itself (the local backend does).
        """
        raise TypeError(f"max_workers: the {self.name} backend takes it itself, not the pool")

    @property
    @abc.abstractmethod
    def kill_grace(self) -> float:
        """Seconds a worker that is told to stop has before it is killed."""

    @property
    def state(self) -> Literal["open", "closed", "terminated"]:
        return "terminated" if self._terminated else "closed" if self._closed else "open"

    def check_open(self) -> None:
        """Raise :class:`PoolClosedError` if no more calls are accepted (or ``RuntimeError``
        if the pool cannot be used from this process)."""
        if self._closed:
            raise PoolClosedError(
                "the pool is closed" + (" (terminated)" if self._terminated else "")
            )
        if os.getpid() != self._owner_pid:
            raise RuntimeError("a pool can only be used by the process that created it")

    @abc.abstractmethod
    def call(self, call: Call, *, kill_on_cancel: bool) -> Awaitable[Any]:
        """Run ``call`` and return its result, or raise its outcome as the caller should see
        it (see :meth:`Pool.run`). Cancelled, the work is stopped (``kill_on_cancel``) or left
        to finish with its outcome discarded; either way this returns only once that is
        settled or handed to the backend. (An awaitable: a backend may hand over a coroutine
        of its own, a frame fewer on the path of every call.)"""

    @abc.abstractmethod
    def pack_chunk(
        self, fn: Callable[[Any], Any], items: Sequence[Any], *, raise_first: bool
    ) -> tuple[Any, int]:
        """What :meth:`run_chunks` needs to run ``fn`` over ``items`` (stopping at the first
        exception if ``raise_first``), and its size in bytes.

        Raises:
            SerializationError: an item cannot be sent.
        """

    @abc.abstractmethod
    def run_chunks(self, feed: ChunkFeed, group: TaskGroup, *, kill_on_cancel: bool) -> ChunkRunner:
        """A runner for a map's chunks: it runs them in tasks of ``group``, reports each
        outcome to ``feed``, and stops (as a cancelled :meth:`call` stops) when ``group`` is
        cancelled."""

    @abc.abstractmethod
    async def open_stream(self, call: Call, *, buffer: int) -> StreamSession:
        """Start the generator ``call`` yields; at most ``buffer`` items ahead of those the
        session's reader took."""

    @abc.abstractmethod
    async def open_channel(self, call: Call, *, buffer: int) -> ChannelSession:
        """Start ``call.fn(channel_end, *call.args, **call.kwargs)``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Accept no more calls."""

    @abc.abstractmethod
    async def join(self) -> None:
        """Wait for the calls accepted to finish, then release every resource."""

    @abc.abstractmethod
    async def terminate(self) -> None:
        """Stop everything now: calls running or waiting raise :class:`PoolClosedError`.
        When this returns, nothing of the backend's runs any more."""

    @abc.abstractmethod
    def shutdown_now(self, grace: float) -> None:
        """Stop everything, blocking: for interpreter exit or a pool dropped unclosed."""

    @abc.abstractmethod
    def stats(self) -> PoolStats: ...

    @abc.abstractmethod
    def describe(self) -> str:
        """What the pool's repr says of the backend, e.g. ``start_method='fork' workers=2``."""


class PendingCalls:
    """The calls a backend accepted and has not finished, those abandoned and still running
    included: what ``join()`` waits for (and ``PoolStats.calls_pending`` counts)."""

    __slots__ = ("_all_done", "count")

    def __init__(self) -> None:
        self.count = 0
        self._all_done: anyio.Event | None = None

    def add(self) -> None:
        self.count += 1

    def finished(self) -> None:
        self.count -= 1
        if self.count == 0 and self._all_done is not None:
            self._all_done.set()
            self._all_done = None

    async def wait_all_done(self) -> None:
        """Return once none is left."""
        if self.count:
            if self._all_done is None:
                self._all_done = anyio.Event()
            await self._all_done.wait()


# --- anypool.Queue ----------------------------------------------------------------------------


class QueueStatus(enum.IntEnum):
    """How a queue request of a worker's ended."""

    OK = 0
    FULL = 1
    EMPTY = 2
    CLOSED = 3
    GONE = 4


class QueueEndpoint(Protocol):
    """What a backend asks of a queue on behalf of calls running in workers."""

    async def serve_put(self, data: bytes, block: bool, timeout: float) -> QueueStatus:
        """Put a pickled item; ``timeout`` < 0: no limit."""

    async def serve_get(self, block: bool, timeout: float) -> tuple[QueueStatus, bytes]:
        """Take a pickled item; ``timeout`` < 0: no limit."""


_pickling_for: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "anypool_pickling_for", default=None
)


@contextlib.contextmanager
def pickling_for(backend: Backend) -> Iterator[None]:
    """Pickle a call for ``backend``: what pickles itself only where the backend supports it
    (an ``anypool.Queue``) asks it (see :func:`require_while_pickling`)."""
    token = _pickling_for.set(backend)
    try:
        yield
    finally:
        _pickling_for.reset(token)


def require_while_pickling(feature: Feature) -> None:
    """Raise :class:`UnsupportedError` if a call is being pickled for a backend that cannot do
    ``feature``."""
    backend = _pickling_for.get()
    if backend is not None:
        backend.require(feature)


# Queues by id: a worker's request names its queue by id, since the queue itself stays here.
_queues: weakref.WeakValueDictionary[int, QueueEndpoint] = weakref.WeakValueDictionary()
_queue_ids = itertools.count(1)


def register_queue(queue: QueueEndpoint) -> int:
    """Give ``queue`` an id that workers may ask for it by, as long as it lives."""
    queue_id = next(_queue_ids)
    _queues[queue_id] = queue
    return queue_id


def find_queue(queue_id: int) -> QueueEndpoint | None:
    """The queue of that id, or ``None`` if it was collected."""
    return _queues.get(queue_id)


# --- running a map's chunks one submitted call each ------------------------------------


class Submitter(Protocol):
    """A backend that runs one pickled call at a time through :meth:`submit` (an engine's
    task, or a call to one of its workers): what :class:`SubmittedChunks` needs."""

    counters: CallCounters

    @property
    def capacity(self) -> int: ...

    async def submit(
        self, fn: Callable[..., Any], payload: Payload, kill_on_cancel: bool
    ) -> tuple[int, Any]:
        """The outcome ``(kind, body)`` of the pickled call, as a worker sends it, counted
        started; a failure to run it raised, counted as ended."""
        ...


class SubmittedChunks(ChunkRunner):
    """Runs a map's chunks through a :class:`Submitter`, as many at once as its capacity."""

    def __init__(
        self,
        backend: Submitter,
        feed: ChunkFeed,
        group: anyio.abc.TaskGroup,
        kill_on_cancel: bool,
    ) -> None:
        self._backend = backend
        self._feed = feed
        self._group = group
        self._kill_on_cancel = kill_on_cancel
        self._lanes = 0
        self._hungry = 0  # lanes about to take a chunk

    def more(self) -> None:
        """Start lanes for the chunks no lane is about to take, up to ``max_workers``."""
        while len(self._feed.to_run) > self._hungry and self._lanes < self._backend.capacity:
            self._lanes += 1
            self._hungry += 1
            self._group.start_soon(self._lane)

    async def _lane(self) -> None:
        feed = self._feed
        try:
            while feed.to_run and not feed.closed:
                chunk = feed.to_run.popleft()
                self._hungry -= 1
                try:
                    await self._run(chunk)
                finally:
                    self._hungry += 1
        finally:
            self._lanes -= 1
            self._hungry -= 1

    async def _run(self, chunk: Chunk) -> None:
        feed, counters = self._feed, self._backend.counters
        try:
            kind, body = await self._backend.submit(feed.fn, chunk.packed, self._kill_on_cancel)
        except Exception as error:
            feed.chunk_failed(chunk, error)
            return
        if kind != RESULT:
            counters.ended("failed")
            feed.chunk_failed(chunk, load_error(body))
            return
        try:
            results, failures, seconds = load_result(body, feed.fn)
        except Exception as error:
            counters.ended("failed")
            feed.chunk_failed(chunk, error)
            return
        counters.ended("completed")
        feed.chunk_done(chunk, results, failures, seconds)


# --- what every backend does with a call's outcome ----------------------------------------


def pickled_chunk(
    fn: Callable[[Any], Any], items: Sequence[Any], *, raise_first: bool
) -> tuple[Payload, int]:
    """The pickled call of ``fn`` over ``items`` in a worker, and its size."""
    event_loop = current_library()
    call: tuple[Any, ...] = (apply_to_chunk, (fn, items, event_loop, raise_first), {}, event_loop)
    payload = dumps_call_arguments(call, fn, items, {}, large_bytes=False)
    return payload, len(payload)


def deliver(counters: CallCounters, kind: int, body: Any, fn: Callable[..., Any]) -> Any:
    """The result of a call whose outcome is ``(kind, body)`` (RESULT or ERROR, as a worker
    sends it), or its error raised; the call counted as ended either way."""
    if kind == RESULT:
        try:
            result = load_result(body, fn)
        except BaseException:
            counters.ended("failed")
            raise
        counters.ended("completed")
        return result
    counters.ended("failed")
    raise load_error(body)
