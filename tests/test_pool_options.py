"""Pool's constructor: defaults, properties, and the options it rejects."""

from __future__ import annotations

import math
import pickle
import types

import pytest

import anypool
import workers
from support import contract_pool, pool_processes

pytestmark = pytest.mark.usefixtures("contract_backend")


@pytest.mark.backends("local")
def test_properties_reflect_the_options() -> None:
    pool = contract_pool(3, start_method="spawn", kill_grace=2.5)
    assert (pool.max_workers, pool.start_method, pool.kill_grace) == (3, "spawn", 2.5)


def test_max_workers_is_the_number_given() -> None:
    assert contract_pool(3).max_workers == 3
    assert contract_pool(1).with_options(buffer=8).max_workers == 1


@pytest.mark.backends("local")
def test_default_start_method_is_forkserver_and_default_kill_grace_one_second() -> None:
    pool = contract_pool(1)
    assert pool.start_method == "forkserver"
    assert pool.kill_grace == 1.0


@pytest.mark.backends("local")
@pytest.mark.parametrize("start_method", ["forkserver", "spawn", "fork"])
def test_every_multiprocessing_start_method_is_accepted(start_method: str) -> None:
    assert contract_pool(1, start_method=start_method).start_method == start_method


@pytest.mark.backends("local")
def test_unknown_start_method_raises_value_error_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="threads") as info:
        contract_pool(1, start_method="threads")
    for name in ("forkserver", "spawn", "fork"):
        assert repr(name) in str(info.value) or f'"{name}"' in str(info.value)


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_below_one_raises_value_error(max_workers: int) -> None:
    with pytest.raises(ValueError, match="max_workers"):
        contract_pool(max_workers)


@pytest.mark.backends("local")
def test_negative_kill_grace_raises_value_error() -> None:
    with pytest.raises(ValueError, match="kill_grace"):
        contract_pool(1, kill_grace=-0.1)


@pytest.mark.backends("local")
def test_zero_kill_grace_is_accepted() -> None:
    assert contract_pool(1, kill_grace=0).kill_grace == 0


def test_creating_a_pool_starts_no_process() -> None:
    before = pool_processes()
    contract_pool(2)
    assert pool_processes() == before


# --- idle_timeout ------------------------------------------------------------------------------


@pytest.mark.backends("local")
@pytest.mark.anyio
@pytest.mark.parametrize("idle_timeout", [None, math.inf, 1e300], ids=["none", "inf", "huge"])
async def test_an_idle_timeout_of_none_or_infinity_means_workers_never_retire(
    idle_timeout: float | None,
) -> None:
    async with contract_pool(1, idle_timeout=idle_timeout) as pool:
        pid = await pool.run(workers.current_pid)
        assert await pool.run(workers.square, 3) == 9
        assert await pool.run(workers.current_pid) == pid
        assert pool.stats().workers_replaced == 0


@pytest.mark.backends("local")
@pytest.mark.parametrize("idle_timeout", [0, -1, -math.inf, math.nan])
def test_an_idle_timeout_not_above_zero_or_nan_raises_value_error(idle_timeout: float) -> None:
    with pytest.raises(ValueError, match=r"^idle_timeout must be a positive number of seconds"):
        contract_pool(1, idle_timeout=idle_timeout)


# --- every parameter is checked, with an error naming it -------------------------------------

BAD_POOL_ARGUMENTS: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"max_workers": "2"}, TypeError, "max_workers must be an int or None, not '2' (a str)"),
    ({"max_workers": 2.0}, TypeError, "max_workers must be an int or None, not 2.0"),
    ({"max_workers": True}, TypeError, "max_workers must be an int or None, not True (a bool)"),
    ({"max_workers": 0}, ValueError, "max_workers must be at least 1, not 0"),
]
"""Arguments of every pool, whatever its backend."""

BAD_LOCAL_OPTIONS: list[tuple[dict[str, object], type[Exception], str]] = [
    ({"start_method": 1}, ValueError, "start_method must be one of"),
    ({"initializer": "setup"}, TypeError, "initializer must be callable, not 'setup' (a str)"),
    ({"initargs": 5}, TypeError, "initargs must be a tuple of arguments, not 5"),
    ({"initargs": "abc"}, TypeError, "initargs must be a tuple of arguments, not 'abc'"),
    ({"max_tasks_per_worker": "9"}, TypeError, "max_tasks_per_worker must be an int or None"),
    ({"max_tasks_per_worker": 0}, ValueError, "max_tasks_per_worker must be at least 1, not 0"),
    ({"idle_timeout": "10"}, TypeError, "idle_timeout must be a positive number of seconds"),
    ({"kill_grace": None}, TypeError, "kill_grace must be a finite number of seconds, 0 or more"),
    ({"kill_grace": -0.5}, ValueError, "kill_grace must be a finite number of seconds"),
    ({"kill_grace": math.inf}, ValueError, "kill_grace must be a finite number of seconds"),
    ({"kill_grace": math.nan}, ValueError, "kill_grace must be a finite number of seconds"),
]
"""Options of the local backend (another backend refuses them all: tests/test_backends.py)."""


@pytest.mark.parametrize(
    ("arguments", "error_type", "message"),
    BAD_POOL_ARGUMENTS,
    ids=[f"{next(iter(case[0]))}={next(iter(case[0].values()))!r}" for case in BAD_POOL_ARGUMENTS],
)
def test_a_bad_pool_argument_raises_an_error_naming_the_parameter(
    arguments: dict[str, object], error_type: type[Exception], message: str
) -> None:
    assert_refused(arguments, error_type, message)


@pytest.mark.backends("local")
@pytest.mark.parametrize(
    ("arguments", "error_type", "message"),
    BAD_LOCAL_OPTIONS,
    ids=[f"{next(iter(case[0]))}={next(iter(case[0].values()))!r}" for case in BAD_LOCAL_OPTIONS],
)
def test_a_bad_local_option_raises_an_error_naming_it(
    arguments: dict[str, object], error_type: type[Exception], message: str
) -> None:
    assert_refused(arguments, error_type, message)


def assert_refused(arguments: dict[str, object], error_type: type[Exception], message: str) -> None:
    with pytest.raises(error_type) as info:
        contract_pool(**arguments)
    assert type(info.value) is error_type
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("arguments", "error_type", "message"),
    [
        ({"kill_on_cancel": "no"}, TypeError, "kill_on_cancel must be True or False, not 'no'"),
        ({"kill_on_cancel": 0}, TypeError, "kill_on_cancel must be True or False, not 0"),
        ({"buffer": "8"}, TypeError, "buffer must be an int, not '8' (a str)"),
        ({"buffer": 0}, ValueError, "buffer must be at least 1, not 0"),
    ],
    ids=["kill_on_cancel-str", "kill_on_cancel-int", "buffer-str", "buffer-zero"],
)
def test_a_bad_option_raises_an_error_naming_it(
    arguments: dict[str, object], error_type: type[Exception], message: str
) -> None:
    with pytest.raises(error_type) as info:
        contract_pool(1).with_options(**arguments)  # type: ignore[arg-type]
    assert type(info.value) is error_type
    assert str(info.value).startswith(message)


@pytest.mark.anyio
async def test_an_option_that_a_method_would_ignore_is_refused_naming_it() -> None:
    async with contract_pool(1) as pool:
        buffered = pool.with_options(buffer=8)
        with pytest.raises(
            ValueError,
            match=r"^buffer was given by with_options\(\), and pool\.run does not take it "
            r"\(it applies to pool\.stream and pool\.open_channel\)$",
        ):
            await buffered.run(workers.square, 2)
        with pytest.raises(ValueError, match=r"and pool\.map does not take it"):
            buffered.map(workers.square, [1])
        patient = pool.with_options(kill_on_cancel=False)
        with pytest.raises(
            ValueError,
            match=r"^kill_on_cancel was given by with_options\(\), and pool\.stream does not "
            r"take it \(it applies to pool\.run and pool\.map\)$",
        ):
            patient.stream(workers.count_up, 3)
        # Each method takes the options that apply to it, kept along the views made from it.
        assert await patient.with_options(kill_on_cancel=True).run(workers.square, 3) == 9
        assert [item async for item in buffered.stream(workers.count_up, 3)] == [0, 1, 2]


BAD_MAP_ARGUMENTS = [
    ({"fn": 5}, TypeError, "fn must be callable, not 5"),
    ({"iterable": 5}, TypeError, "iterable must be an iterable or an async iterable, not 5"),
    ({"chunksize": "big"}, TypeError, "chunksize must be an int or 'auto', not 'big' (a str)"),
    ({"chunksize": 0}, ValueError, "chunksize must be at least 1, not 0"),
    ({"max_in_flight": 2.5}, TypeError, "max_in_flight must be an int or None, not 2.5"),
    ({"max_in_flight": 0}, ValueError, "max_in_flight must be at least 1, not 0"),
    ({"ordered": "yes"}, TypeError, "ordered must be True or False, not 'yes' (a str)"),
    ({"return_exceptions": None}, TypeError, "return_exceptions must be True or False, not None"),
    ({"progress": "bar"}, TypeError, "progress must be True, False, None or a callable"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("arguments", "error_type", "message"),
    BAD_MAP_ARGUMENTS,
    ids=[f"{next(iter(case[0]))}={next(iter(case[0].values()))!r}" for case in BAD_MAP_ARGUMENTS],
)
async def test_a_bad_map_argument_raises_an_error_naming_it_before_anything_runs(
    arguments: dict[str, object], error_type: type[Exception], message: str
) -> None:
    async with contract_pool(1) as pool:
        call: dict[str, object] = {"fn": workers.square, "iterable": [1, 2], **arguments}
        with pytest.raises(error_type) as info:
            pool.map(**call)  # type: ignore[arg-type]
        assert type(info.value) is error_type
        assert str(info.value).startswith(message)
        assert pool.stats().workers_alive == 0


@pytest.mark.anyio
async def test_a_function_that_is_not_callable_is_refused_by_run_stream_and_open_channel() -> None:
    async with contract_pool(1) as pool:
        with pytest.raises(TypeError, match=r"^fn must be callable, not 'square' \(a str\)$"):
            await pool.run("square")  # type: ignore[call-overload]
        with pytest.raises(TypeError, match=r"^fn must be callable, not None$"):
            pool.stream(None)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match=r"^fn must be callable, not 3$"):
            pool.open_channel(3)  # type: ignore[call-overload]
        assert pool.stats().workers_alive == 0


# --- public names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", anypool.__all__)
def test_every_public_name_reports_the_anypool_module(name: str) -> None:
    value = getattr(anypool, name)
    if isinstance(value, (type, types.FunctionType)):
        assert value.__module__ == "anypool"
        assert pickle.loads(pickle.dumps(value)) is value
