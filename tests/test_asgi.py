"""``anypool.asgi.cancel_on_disconnect`` against a stand-in ASGI ``receive``: what the block's
outcome is when the client stays, leaves, or the block fails or is cancelled from outside.
(tests/test_fastapi_service.py runs it in a real server, examples/fastapi_service.py.)"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest

import anypool
from anypool.asgi import ClientDisconnected, cancel_on_disconnect
from support import Victim

pytestmark = pytest.mark.anyio

BODY_PART = {"type": "http.request", "body": b"{}", "more_body": True}
BODY_END = {"type": "http.request", "body": b"", "more_body": False}
DISCONNECT = {"type": "http.disconnect"}


class Client:
    """A stand-in for a server's ``receive``: the request's body, then, once :meth:`leave` is
    called, ``http.disconnect`` (until then it waits, as uvicorn does)."""

    def __init__(self) -> None:
        self.messages: list[Mapping[str, object]] = [BODY_PART, BODY_END]
        self.left = anyio.Event()
        self.received = 0

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> Mapping[str, object]:
        self.received += 1
        if self.messages:
            return self.messages.pop(0)
        await self.left.wait()
        return DISCONNECT


async def test_the_block_keeps_its_result_while_the_client_stays() -> None:
    client = Client()
    async with cancel_on_disconnect(client.receive):
        await anyio.sleep(0.05)
        result = "done"
    assert result == "done"
    assert client.received == 3, "the watcher did not read past the body"


async def test_a_disconnect_kills_the_call_in_the_block_and_raises_client_disconnected(
    tmp_path: Path,
) -> None:
    client = Client()
    async with anypool.Pool(max_workers=1) as pool:
        victim = Victim(pool, tmp_path)

        async def request() -> None:
            async with cancel_on_disconnect(client.receive), anyio.create_task_group() as group:
                group.start_soon(victim.run)
                await victim.started()
                client.leave()

        with pytest.raises(ClientDisconnected) as caught:
            await request()
        await victim.assert_killed()
        assert await pool.run(abs, -2) == 2
    assert caught.value.status_code == 499
    assert str(caught.value) == "the client closed the connection before the response was sent"


async def test_an_exception_leaves_the_block_as_itself() -> None:
    async def request() -> None:
        async with cancel_on_disconnect(Client().receive):
            await anyio.sleep(0)
            raise KeyError("not wrapped")

    with pytest.raises(KeyError, match="not wrapped"):
        await request()


async def test_a_deadline_around_the_block_stays_a_cancellation() -> None:
    with anyio.move_on_after(0.05) as deadline:
        async with cancel_on_disconnect(Client().receive):
            await anyio.sleep_forever()
    assert deadline.cancelled_caught


async def test_a_timeout_inside_the_block_leaves_it_as_a_timeout_error() -> None:
    async def request() -> None:
        async with cancel_on_disconnect(Client().receive):
            with anyio.fail_after(0.05):
                await anyio.sleep_forever()

    with pytest.raises(TimeoutError):
        await request()


async def test_a_block_that_finished_as_the_client_left_keeps_its_result() -> None:
    client = Client()
    client.messages = []
    client.leave()
    async with cancel_on_disconnect(client.receive):
        # The watcher cancels the block while this waits, shielded; the block then ends
        # without another checkpoint, so nothing interrupted it.
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.05)
        result = "done"
    assert result == "done"
