"""The messages that cross a worker's pipe: their kinds and what their payloads hold.

Each message is one frame (see ``framing``).

Parent to worker:
    CALL        a pickled tuple ``(fn, args, kwargs, event_loop)``; ``event_loop`` says where a
                coroutine returned by ``fn`` runs: ``"asyncio"`` or ``"trio"``, as the caller.
    STREAM      a pickled tuple ``(fn, args, kwargs, event_loop, buffer)``: run the generator
                ``fn(*args, **kwargs)`` and send its items, at most ``buffer`` ahead of CREDIT.
    CREDIT      a COUNT: the parent took that many more items of the stream.
    CLOSE       empty: close the stream's generator (GeneratorExit) and finish with RESULT;
                for a channel: the parent takes nothing more (and sends nothing more).
    OPEN        a pickled tuple ``(fn, args, kwargs, event_loop, buffer)``: call
                ``fn(channel_end, *args, **kwargs)``; then ITEM and CREDIT flow both ways.
    EOF         empty: the parent sends no more ITEMs on the channel.
    QUEUE_REPLY a REPLY status, then what a queue request returns (a pickled item for a get).
    QUEUED      a COUNT, the call's number (counted per worker), then a CALL's payload: a
                call sent while the worker runs another. The worker announces it (STARTED)
                before it starts it, unless a DROP for it has arrived by then (SKIPPED).
    DROP        a COUNT: do not start the QUEUED call of that number; too late once started.
Worker to parent:
    RESULT      the pickled return value of a call; ends a stream or a channel too.
    ITEM        one pickled item of a stream, or of a channel (both ways).
    CREDIT      (channel) the worker took that many more items; the first one says it started.
    QUEUE_PUT   a QUEUE_REQUEST, then a pickled item: put it in a queue of the parent.
    QUEUE_GET   a QUEUE_REQUEST: take an item from a queue of the parent.
    ERROR       a pickled :class:`ErrorReport`: the call raised.
    INIT_FAILED a pickled :class:`ErrorReport`: the pool's initializer raised; the worker exits.
    RETIRING    empty: the worker was idle for ``idle_timeout`` and exits without reading
                anything more, so a CALL the parent sent meanwhile was never started.
    STARTED     a COUNT: the worker starts the QUEUED call of that number. It comes after
                the outcome of the call before, often in the same write.
    SKIPPED     a COUNT: the worker did not start that QUEUED call, as a DROP asked.

This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import struct

from .. import _execution

TYPE_CHECKING = False  # as typing's: workers start without typing (tests/test_architecture.py)
if TYPE_CHECKING:
    from typing import Any, Final, NamedTuple
else:
    from ..._named_tuple import NamedTuple

CALL: Final = 1
RESULT: Final = _execution.RESULT
ERROR: Final = _execution.ERROR
INIT_FAILED: Final = 4
RETIRING: Final = 5
STREAM: Final = 6
CREDIT: Final = 7
CLOSE: Final = 8
ITEM: Final = _execution.ITEM
OPEN: Final = 10
EOF: Final = 11
QUEUE_PUT: Final = 12
QUEUE_GET: Final = 13
QUEUE_REPLY: Final = 14
QUEUED: Final = 15
DROP: Final = 16
STARTED: Final = 17
SKIPPED: Final = 18

COUNT: Final = struct.Struct("<Q")

QUEUE_REQUEST: Final = struct.Struct("<Q?d")
"""A queue request: the queue's id, whether to wait, and for how long at most (``-1.0``: no
limit). A put's pickled item follows."""

REPLY: Final = struct.Struct("<B")
"""The status of a queue request, one of the ``REPLY_*`` values; a get's item follows ``OK``."""
# The values of backends._base.QueueStatus (which the worker side does not import).
REPLY_OK: Final = 0
REPLY_FULL: Final = 1
REPLY_EMPTY: Final = 2
REPLY_CLOSED: Final = 3
REPLY_GONE: Final = 4


NUMBER: Final = struct.Struct("<q")
"""A number on the fork server's socket (a message's length) or on a status pipe (a worker's
pid, then its exit code)."""


class ForkserverBoot(NamedTuple):
    """What the fork server needs to stand in for the parent (see ``child.forkserver``)."""

    sys_path: list[str]
    sys_argv: list[str]
    authkey: bytes
    """multiprocessing's key of the parent's, for a worker that connects back to it."""


class ForkRequest(NamedTuple):
    """A request to the fork server for one worker."""

    cwd: str
    sys_path: list[str]
    preload: list[str]
    """Modules the server is to import, once, for the workers it forks later."""
    config: bytes
    """The pickled ``WorkerConfig``."""


class WorkerConfig(NamedTuple):
    """What a worker needs to know at start."""

    initializer: Any
    initargs: tuple[Any, ...]
    idle_timeout: float | None
