"""Cancel a web request's work when its client goes away.

ASGI servers (uvicorn, hypercorn) and the frameworks on top of them (Starlette, FastAPI) do not
cancel a request's handler when its client disconnects: they tell the application through the
request's ``receive`` callable (an ``{"type": "http.disconnect"}`` message) and let the handler
run to its end. A handler awaiting ``pool.run`` then keeps a worker busy for a response nobody
will read, and holds up the server's graceful shutdown until it is done.
:func:`cancel_on_disconnect` watches ``receive`` while its block runs and cancels the block when
the client leaves: the pool kills the worker running the call, as for any cancellation.

Nothing here imports a web framework: an ASGI ``receive`` callable is all it needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

import anyio

__all__ = ["ClientDisconnected", "Receive", "cancel_on_disconnect"]

Receive = Callable[[], Awaitable[Mapping[str, object]]]
"""An ASGI ``receive`` callable, such as Starlette's and FastAPI's ``request.receive``."""


class ClientDisconnected(Exception):
    """The client of an HTTP request closed its connection before the response was sent.

    Raised by :func:`cancel_on_disconnect` when the ``http.disconnect`` message came while its
    block ran, once the block has been cancelled (a pool call in it has had its worker killed
    and reaped). Nobody is left to read a response: map it to :attr:`status_code` so that the
    server's access log and metrics tell an abandoned request from a served one.

    Attributes:
        status_code: 499, "Client Closed Request" (nginx's convention for this case).
    """

    status_code = 499

    def __init__(self) -> None:
        super().__init__("the client closed the connection before the response was sent")


@asynccontextmanager
async def cancel_on_disconnect(receive: Receive) -> AsyncIterator[None]:
    """Run the block, and cancel it if the HTTP request's client disconnects meanwhile.

    ``async with cancel_on_disconnect(request.receive): ...`` watches ``receive`` (the
    request's ASGI ``receive`` callable) in a task beside the block. When ``receive`` returns
    ``{"type": "http.disconnect"}``, the block is cancelled (a ``pool.run`` in it kills the
    worker running the call, which is reaped before the cancellation leaves ``pool.run``) and
    ``ClientDisconnected`` is raised from the ``async with`` statement. Otherwise the block's
    result and exceptions are its own: an exception leaves the block unchanged (not wrapped in
    an ``ExceptionGroup``), and a cancellation from outside (the server's shutdown, a deadline
    around the block) stays a cancellation.

    Enter the block after reading the request's body, if it has one (FastAPI reads it before
    calling the endpoint when the endpoint declares a body parameter): the watcher reads the
    ``http.request`` messages that carry the body and drops them. The server must deliver
    ``http.disconnect`` while the request runs, as uvicorn and hypercorn do; with the block
    ended, the watcher is cancelled, and ``receive`` may be used again (a streaming response
    watches it too). HTTP only: a WebSocket's ``receive`` carries its messages.

    Args:
        receive: the request's ASGI ``receive`` callable.

    Raises:
        ClientDisconnected: the client disconnected while the block ran; the block was
            cancelled. If the block finished anyway (its last step could not be
            interrupted), its outcome is kept instead.
    """
    block = anyio.CancelScope()
    failure: Exception | None = None
    async with anyio.create_task_group() as watcher:
        watcher.start_soon(_cancel_on_disconnect, receive, block)
        try:
            with block:
                yield
        except Exception as exc:
            # Raised again below, as itself: leaving the task group with it would wrap it in an
            # ExceptionGroup, and the handler's own exceptions (an HTTPException, a
            # TimeoutError from a deadline) must reach the framework's exception handlers.
            failure = exc
        finally:
            watcher.cancel_scope.cancel()
    if failure is not None:
        raise failure
    # Only the cancellation the block itself caught counts: a disconnect that came after the
    # block's last checkpoint leaves its result (the response is sent to nobody, harmlessly).
    if block.cancelled_caught:
        # (Not chained to the cancellation the block caught: that is how it was stopped, not
        # an error of its own.)
        raise ClientDisconnected from None


async def _cancel_on_disconnect(receive: Receive, block: anyio.CancelScope) -> None:
    """Wait for ``http.disconnect`` on ``receive``, then cancel ``block``."""
    # Until the body is read, receive() returns its http.request messages; after the last one
    # it waits for the disconnect (uvicorn: also once the response is complete, which cannot
    # happen while the block runs).
    while (await receive()).get("type") != "http.disconnect":
        pass
    block.cancel()
