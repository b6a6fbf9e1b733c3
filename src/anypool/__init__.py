"""anypool: an awaitable, cancellable process pool for asyncio, uvloop and trio."""

from typing import TYPE_CHECKING

__all__ = [
    "START_METHODS",
    "AsyncChannelEnd",
    "BrokenWorkerError",
    "CallOptions",
    "Channel",
    "ChannelEnd",
    "InitializerError",
    "MapResults",
    "Pool",
    "PoolClosedError",
    "PoolStats",
    "Queue",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "StreamResults",
    "UnsupportedError",
    "WorkerQueue",
    "cpu_count",
    "run",
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
    from ._map import MapResults
    from ._pool import START_METHODS, CallOptions, Pool
    from ._queue import Queue
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
        "BrokenWorkerError": "._errors",
        "InitializerError": "._errors",
        "PoolClosedError": "._errors",
        "RemoteError": "._errors",
        "RemoteTraceback": "._errors",
        "SerializationError": "._errors",
        "UnsupportedError": "._errors",
        "MapResults": "._map",
        "START_METHODS": "._pool",
        "CallOptions": "._pool",
        "Pool": "._pool",
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
