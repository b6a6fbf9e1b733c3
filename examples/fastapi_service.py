"""A FastAPI service that counts primes on a pool of worker processes.

The pool belongs to the app's lifespan: it starts with the server and is closed at its
shutdown. A request whose client disconnects has its computation cancelled and its worker
killed at once (anypool.asgi.cancel_on_disconnect; logged as a 499), and ``?timeout=`` stops a
computation that takes too long (504). See docs/web.md.

    python -m pip install fastapi uvicorn      # the example's needs, not anypool's
    python examples/fastapi_service.py         # serves http://127.0.0.1:8000 until Ctrl-C

    curl 'http://127.0.0.1:8000/primes?limit=1000000'             # {"limit":1000000,"primes":78498}
    curl 'http://127.0.0.1:8000/primes?limit=10000000000&timeout=2' # 504 after 2 s, worker killed
    curl 'http://127.0.0.1:8000/primes?limit=10000000000'  # Ctrl-C this curl: its worker is killed
    curl 'http://127.0.0.1:8000/health'                    # the pool's counters
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request, Response

import anypool
from anypool.asgi import ClientDisconnected, cancel_on_disconnect

WORKERS = 2
GRACEFUL_SHUTDOWN = 5
"""Seconds the server's shutdown waits for requests still running (their clients still
connected) before it cancels them, which kills their workers."""

logger = logging.getLogger("fastapi_service")


def count_primes(limit: int) -> int:
    """CPU-bound pure Python: count the primes below `limit`."""
    return sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, anypool.Pool]]:
    # Shared with every request as request.state.pool. Leaving the block at shutdown waits for
    # the calls still running (none once the server has cancelled its requests), then stops
    # and reaps the workers.
    async with anypool.Pool(WORKERS) as pool:
        yield {"pool": pool}


app = FastAPI(lifespan=lifespan)


@app.exception_handler(ClientDisconnected)
async def client_disconnected(request: Request, exc: ClientDisconnected) -> Response:
    # The client never sees this response (uvicorn drops it, and writes no access-log line for
    # it), but middleware that records status codes does; say here what happened.
    logger.info('"%s %s" %d: %s', request.method, request.url.path, exc.status_code, exc)
    return Response(status_code=exc.status_code)


@app.get("/primes")
async def primes(
    request: Request,
    limit: Annotated[int, Query(ge=2, le=10**12)],
    timeout: Annotated[float | None, Query(gt=0, description="seconds; then 504")] = None,
) -> dict[str, int]:
    """Count the primes below `limit` on a worker process."""
    pool: anypool.Pool = request.state.pool
    try:
        async with cancel_on_disconnect(request.receive):
            with anyio.fail_after(timeout):
                count = await pool.run(count_primes, limit)
    except TimeoutError:
        # fail_after cancelled the call: its worker is already killed and reaped.
        raise HTTPException(
            504, f"no result within {timeout} s: the computation was stopped"
        ) from None
    return {"limit": limit, "primes": count}


@app.get("/health")
async def health(request: Request) -> dict[str, object]:
    """Answers while every worker is busy: the event loop never waits for a computation."""
    pool: anypool.Pool = request.state.pool
    return {"status": "ok", **dataclasses.asdict(pool.stats())}


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve /primes and /health on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (logged)")
    parser.add_argument("--graceful-shutdown", type=int, default=GRACEFUL_SHUTDOWN)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=arguments.port,
        timeout_graceful_shutdown=arguments.graceful_shutdown,
    )


if __name__ == "__main__":
    main()
