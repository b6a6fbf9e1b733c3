"""Choosing what runs a pool's calls: ``Pool(backend=...)``, what a backend may refuse, and the
counts every backend reports."""

from __future__ import annotations

import anyio
import pytest

import anypool
import workers
from anypool.backends._base import Feature
from anypool.backends.local.backend import LocalBackend
from support import contract_pool, wait_until_async

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


class _LocalWithout(LocalBackend):
    """The local backend, declaring that it cannot do some things: what a cluster backend
    without streams or channels does."""

    name = "local-without-streams"
    unsupported = frozenset({Feature.STREAM, Feature.CHANNEL, Feature.FINISH_ON_CANCEL})


async def test_a_pool_runs_on_the_backend_it_is_given() -> None:
    backend = LocalBackend(1, start_method="fork", kill_grace=0.5)
    async with anypool.Pool(backend=backend) as pool:
        assert pool.backend is backend
        assert (pool.max_workers, pool.start_method, pool.kill_grace) == (1, "fork", 0.5)
        assert await pool.run(workers.square, 7) == 49
        assert "start_method='fork'" in repr(pool)
    assert pool.stats().workers_alive == 0


def test_a_pool_given_a_backend_refuses_the_local_backends_options() -> None:
    with pytest.raises(ValueError, match=r"^start_method, idle_timeout: options of the pool's"):
        anypool.Pool(backend=LocalBackend(1), start_method="spawn", idle_timeout=5)
    with pytest.raises(TypeError, match=r"^max_workers: the local backend takes it itself"):
        anypool.Pool(2, backend=LocalBackend(1))
    with pytest.raises(TypeError, match="backend must be an anypool backend or None, not 'ray'"):
        anypool.Pool(backend="ray")  # type: ignore[arg-type]


async def test_what_a_backend_cannot_do_is_refused_before_anything_starts() -> None:
    async with anypool.Pool(backend=_LocalWithout(1)) as pool:
        with pytest.raises(anypool.UnsupportedError) as stream:
            pool.stream(workers.count_up, 3)
        assert str(stream.value) == (
            "the local-without-streams backend does not support pool.stream"
        )
        assert isinstance(stream.value, NotImplementedError)
        with pytest.raises(anypool.UnsupportedError, match=r"does not support pool\.open_channel"):
            pool.open_channel(workers.square)
        with pytest.raises(anypool.UnsupportedError, match="does not support kill_on_cancel=False"):
            pool.with_options(kill_on_cancel=False)
        # What it can do, it does.
        assert await pool.run(workers.square, 3) == 9
        assert pool.stats().workers_alive == 1


@pytest.mark.usefixtures("contract_backend")
async def test_stats_count_the_calls_waiting_and_those_join_waits_for(tmp_path) -> None:
    async with contract_pool(1) as pool, anyio.create_task_group() as group:
        release = tmp_path / "release"
        for index in range(3):
            group.start_soon(pool.run, workers.return_when_path_exists, release, index, 30.0)
        # One call runs; the other two wait (for the worker, or behind its call).
        assert await wait_until_async(lambda: pool.stats().calls_pending == 3)
        stats = pool.stats()
        assert (stats.calls_waiting, stats.calls_pending) == (2, 3)
        release.touch()
    stats = pool.stats()
    assert (stats.calls_waiting, stats.calls_pending, stats.calls_completed) == (0, 0, 3)
