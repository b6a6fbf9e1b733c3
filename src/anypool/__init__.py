"""anypool: an awaitable, cancellable process pool for asyncio, uvloop and trio."""

# As typing's, which workers do not import (they import this package first).
TYPE_CHECKING = False

__all__ = [
    "START_METHODS",
    "AsyncChannelEnd",
    "BrokenWorkerError",
    "Channel",
    "ChannelEnd",
    "Executor",
    "InitializerError",
    "MapResults",
    "Pool",
    "PoolClosedError",
    "PoolStats",
    "PoolView",
    "Queue",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "StreamResults",
    "UnsupportedError",
    "WorkerQueue",
    "cpu_count",
    "run",
    "run_sync",
]

if TYPE_CHECKING:
    from ._channel import Channel
    from ._cpu import cpu_count
    from ._default_pool import run
    from ._errors import (
        BrokenWorkerError,
        InitializerError,
        PoolClosedError,
        RemoteError,
        RemoteTraceback,
        SerializationError,
        UnsupportedError,
    )
    from ._executor import Executor
    from ._map import MapResults
    from ._pool import START_METHODS, Pool, PoolView
    from ._queue import Queue
    from ._run_sync import run_sync
    from ._stats import PoolStats
    from ._stream import StreamResults
    from .backends.local.child.duplex import AsyncChannelEnd, ChannelEnd
    from .backends.local.child.queue import WorkerQueue
else:
    # Workers import anypool.backends.local.child, which must not pull anyio in: the public
    # names are loaded on first use instead of here.
    import importlib

    _HOMES = {
        "AsyncChannelEnd": ".backends.local.child.duplex",
        "ChannelEnd": ".backends.local.child.duplex",
        "Channel": "._channel",
        "WorkerQueue": ".backends.local.child.queue",
        "Queue": "._queue",
        "cpu_count": "._cpu",
        "run": "._default_pool",
        "run_sync": "._run_sync",
        "Executor": "._executor",
        "BrokenWorkerError": "._errors",
        "InitializerError": "._errors",
        "PoolClosedError": "._errors",
        "RemoteError": "._errors",
        "RemoteTraceback": "._errors",
        "SerializationError": "._errors",
        "UnsupportedError": "._errors",
        "MapResults": "._map",
        "START_METHODS": "._pool",
        "Pool": "._pool",
        "PoolView": "._pool",
        "PoolStats": "._stats",
        "StreamResults": "._stream",
    }

    def __getattr__(name):
        try:
            home = _HOMES[name]
        except KeyError:
            raise AttributeError(f"module 'anypool' has no attribute {name!r}") from None
        value = getattr(importlib.import_module(home, __name__), name)
        globals()[name] = value
        return value

    def __dir__():
        return sorted([*globals(), *__all__])
