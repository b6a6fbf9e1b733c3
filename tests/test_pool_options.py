"""Pool's constructor: defaults, properties, and the options it rejects."""

from __future__ import annotations

import pytest

import anypool
from support import pool_processes


def test_properties_reflect_the_options() -> None:
    pool = anypool.Pool(3, start_method="spawn", kill_grace=2.5)
    assert (pool.max_workers, pool.start_method, pool.kill_grace) == (3, "spawn", 2.5)


def test_default_start_method_is_forkserver_and_default_kill_grace_one_second() -> None:
    pool = anypool.Pool(1)
    assert pool.start_method == "forkserver"
    assert pool.kill_grace == 1.0


@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_every_multiprocessing_start_method_is_accepted(start_method: str) -> None:
    assert anypool.Pool(1, start_method=start_method).start_method == start_method


def test_unknown_start_method_raises_value_error_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="threads") as info:
        anypool.Pool(1, start_method="threads")
    for name in ("forkserver", "spawn", "fork"):
        assert repr(name) in str(info.value) or f'"{name}"' in str(info.value)


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_below_one_raises_value_error(max_workers: int) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        anypool.Pool(max_workers)


def test_negative_kill_grace_raises_value_error() -> None:
    with pytest.raises(ValueError, match="kill_grace"):
        anypool.Pool(1, kill_grace=-0.1)


def test_zero_kill_grace_is_accepted() -> None:
    assert anypool.Pool(1, kill_grace=0).kill_grace == 0


def test_creating_a_pool_starts_no_process() -> None:
    before = pool_processes()
    anypool.Pool(2)
    assert pool_processes() == before
