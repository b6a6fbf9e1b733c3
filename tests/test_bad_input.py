"""Bad input through pool.run, pool.map and pool.stream: arguments that cannot be pickled,
results that cannot be pickled, exceptions that cannot be pickled (their ``__reduce__`` raises,
or pickling them never ends), exceptions with a 10 MiB message, and results of hundreds of MiB.

Each case must end in a clear error that names what failed (a SerializationError naming the
argument, the item or the result and its type; a RemoteError naming the exception's type; or
the exception itself), and the pool must serve the next call, on the same worker where the
failure left it alive.

The bad values come from ``workers.misbehave``; a map mixes good items (ints) with one bad item
(a string that ``workers.value_or_misbehave`` hands to ``misbehave``).

"The same worker" is the local pool's promise (``owns_workers``): Ray's worker processes are
Ray's, which of them runs the next call is Ray's choice; there the pool must serve the next call.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import pytest

import anypool
import workers
from anypool.backends import Feature
from support import assert_pool_serves, contract, contract_pool

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    pytest.mark.anyio,
    # A case that hangs fails in a minute rather than after the suite's default timeout.
    pytest.mark.timeout(60),
]

MIB = 1 << 20
HUGE_MESSAGE = 10 * MIB
BIG_RESULT = 300 * MIB
BIG_ITEM = 64 * MIB

BOTTOMLESS_TYPE = "workers.BottomlessPickle"


# --- helpers ---------------------------------------------------------------------------------


async def worker_pid(pool: anypool.Pool) -> int:
    return await pool.run(workers.current_pid)


async def run_error(pool: anypool.Pool, fn: Callable[..., object], *args: object) -> Exception:
    """The exception ``pool.run(fn, *args)`` raised."""
    try:
        result = await pool.run(fn, *args)
    except Exception as error:
        return error
    raise AssertionError(f"the call returned {result!r} instead of raising")


async def map_outcome(
    pool: anypool.Pool,
    fn: Callable[[object], object],
    items: list[object],
    *,
    return_exceptions: bool,
) -> tuple[list[object], Exception | None]:
    """The results a map handed out, and the exception it raised (``None`` if none)."""
    received: list[object] = []
    try:
        async with pool.map(fn, items, return_exceptions=return_exceptions) as results:
            async for result in results:
                received.append(result)
    except Exception as error:
        return received, error
    return received, None


def map_failure(
    received: list[object],
    error: Exception | None,
    before: list[object],
    after: list[object],
    *,
    return_exceptions: bool,
) -> BaseException:
    """Check that a map delivered ``before``, then failed on one item, then (with
    ``return_exceptions``) delivered ``after``; return that item's exception."""
    if not return_exceptions:
        assert received == before, "the results before the bad item were not all delivered"
        assert error is not None, "the map did not raise"
        return error
    assert error is None, f"the map raised {error!r} despite return_exceptions=True"
    assert len(received) == len(before) + 1 + len(after)
    position = len(before)
    assert received[:position] == before
    assert received[position + 1 :] == after
    failure = received[position]
    assert isinstance(failure, BaseException), f"no exception in place of the bad item: {failure!r}"
    return failure


async def stream_outcome(
    pool: anypool.Pool, fn: Callable[..., object], *args: object
) -> tuple[list[object], Exception | None]:
    """The items a stream handed out, and the exception it raised (``None`` if none)."""
    received: list[object] = []
    try:
        async with pool.stream(fn, *args) as items:
            async for item in items:
                received.append(item)
    except Exception as error:
        return received, error
    return received, None


def generator(kind: str) -> Callable[..., object]:
    return workers.yield_then_misbehave if kind == "sync" else workers.async_yield_then_misbehave


def assert_is_remote_error(error: BaseException | None, type_name: str, message: str) -> None:
    assert isinstance(error, anypool.RemoteError), f"expected a RemoteError, got {error!r}"
    assert error.type_name == type_name
    assert error.message == message
    assert "Traceback (most recent call last):" in error.traceback
    assert "misbehave" in error.traceback
    assert isinstance(error.__cause__, anypool.RemoteTraceback)


def assert_is_huge_value_error(error: BaseException | None) -> None:
    assert type(error) is ValueError, f"expected the ValueError itself, got {type(error)!r}"
    # Compared apart from the assert: a failing comparison would print 10 MiB.
    intact = error.args == (workers.huge_message(HUGE_MESSAGE),)
    assert intact, f"the message did not arrive whole: {len(str(error))} characters"
    assert isinstance(error.__cause__, anypool.RemoteTraceback)
    assert "misbehave" in str(error.__cause__)


def assert_big_zeros(value: object, size: int) -> None:
    assert isinstance(value, bytes)
    assert len(value) == size
    assert value.count(0) == size


# --- unpicklable arguments -------------------------------------------------------------------
#
# The parent cannot pickle the call: nothing reaches a worker.


@pytest.mark.parametrize(
    ("make_argument", "type_name"),
    [(threading.Lock, "_thread.lock"), (workers.BottomlessPickle, BOTTOMLESS_TYPE)],
    ids=["lock", "bottomless"],
)
async def test_run_unpicklable_argument_names_the_argument_and_its_type(
    make_argument: Callable[[], object], type_name: str
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        with pytest.raises(anypool.SerializationError) as info:
            await pool.run(workers.identity, make_argument())
        message = str(info.value)
        assert "argument 0" in message
        assert type_name in message
        assert "identity" in message
        await assert_pool_serves(pool, pid)


@pytest.mark.parametrize("return_exceptions", [False, True], ids=["raised", "returned"])
@pytest.mark.parametrize(
    ("make_item", "type_name"),
    [(threading.Lock, "_thread.lock"), (workers.BottomlessPickle, BOTTOMLESS_TYPE)],
    ids=["lock", "bottomless"],
)
async def test_map_unpicklable_item_names_its_type_and_the_other_items_are_served(
    make_item: Callable[[], object], type_name: str, return_exceptions: bool
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await map_outcome(
            pool, workers.identity, [1, 2, make_item(), 4, 5], return_exceptions=return_exceptions
        )
        failure = map_failure(received, error, [1, 2], [4, 5], return_exceptions=return_exceptions)
        assert isinstance(failure, anypool.SerializationError)
        assert type_name in str(failure)
        assert "identity" in str(failure)
        # Leaving a map at an exception cancels its calls still running, killing their worker:
        # only a map that ran to the end leaves its worker for sure.
        await assert_pool_serves(pool, pid if return_exceptions else None)


@pytest.mark.parametrize(
    ("make_argument", "type_name"),
    [(threading.Lock, "_thread.lock"), (workers.BottomlessPickle, BOTTOMLESS_TYPE)],
    ids=["lock", "bottomless"],
)
@pytest.mark.needs(Feature.STREAM)
async def test_stream_unpicklable_argument_names_the_argument_and_its_type(
    make_argument: Callable[[], object], type_name: str
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await stream_outcome(pool, workers.count_up, make_argument())
        assert received == []
        assert isinstance(error, anypool.SerializationError)
        assert "argument 0" in str(error)
        assert type_name in str(error)
        assert "count_up" in str(error)
        await assert_pool_serves(pool, pid)


# --- unpicklable results ---------------------------------------------------------------------
#
# The worker cannot pickle what the function returned (or yielded): it reports that and serves
# the next call.


@pytest.mark.parametrize(
    ("what", "type_name"),
    [("lock", "_thread.lock"), ("bottomless", BOTTOMLESS_TYPE)],
)
async def test_run_unpicklable_result_names_the_function_and_the_type_and_keeps_the_worker(
    what: str, type_name: str
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        with pytest.raises(anypool.SerializationError) as info:
            await pool.run(workers.misbehave, what)
        message = str(info.value)
        assert "the result of misbehave" in message
        assert type_name in message
        await assert_pool_serves(pool, pid)


@pytest.mark.parametrize("return_exceptions", [False, True], ids=["raised", "returned"])
@pytest.mark.parametrize(
    ("what", "type_name"),
    [("lock", "_thread.lock"), ("bottomless", BOTTOMLESS_TYPE)],
)
async def test_map_unpicklable_result_names_the_function_and_the_type(
    what: str, type_name: str, return_exceptions: bool
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await map_outcome(
            pool,
            workers.value_or_misbehave,
            [1, 2, what, 4, 5],
            return_exceptions=return_exceptions,
        )
        failure = map_failure(received, error, [1, 2], [4, 5], return_exceptions=return_exceptions)
        assert isinstance(failure, anypool.SerializationError)
        message = str(failure)
        # The user's function, not the library's chunk runner.
        assert "the result of value_or_misbehave" in message
        assert type_name in message
        await assert_pool_serves(pool, pid if return_exceptions else None)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    ("what", "type_name"),
    [("lock", "_thread.lock"), ("bottomless", BOTTOMLESS_TYPE)],
)
@pytest.mark.needs(Feature.STREAM)
async def test_stream_unpicklable_item_names_the_generator_and_the_type_and_keeps_the_worker(
    what: str, type_name: str, kind: str
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        fn = generator(kind)
        received, error = await stream_outcome(pool, fn, "before", what, "after")
        assert received == ["before"]
        assert isinstance(error, anypool.SerializationError)
        message = str(error)
        assert f"yielded by {fn.__name__}" in message
        assert type_name in message
        await assert_pool_serves(pool, pid)


# --- exceptions that cannot be pickled -------------------------------------------------------
#
# The worker cannot pickle the function's exception: the caller gets a RemoteError with the
# exception's type name, message and traceback, and the worker serves the next call.

UNPICKLABLE_EXCEPTIONS = [
    ("unreducible", "workers.UnreducibleError", "unreducible refuses pickling"),
    ("exiting-reduce", "workers.ExitingReduceError", "exiting-reduce refuses pickling"),
    ("bottomless-error", "workers.BottomlessError", "bottomless-error cannot be pickled"),
]
UNPICKLABLE_EXCEPTION_IDS = ["reduce-raises", "reduce-raises-system-exit", "bottomless"]


@pytest.mark.parametrize(
    ("what", "type_name", "message"), UNPICKLABLE_EXCEPTIONS, ids=UNPICKLABLE_EXCEPTION_IDS
)
async def test_run_unpicklable_exception_becomes_remote_error_and_keeps_the_worker(
    what: str, type_name: str, message: str
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        error = await run_error(pool, workers.misbehave, what)
        assert_is_remote_error(error, type_name, message)
        await assert_pool_serves(pool, pid)


@pytest.mark.parametrize("return_exceptions", [False, True], ids=["raised", "returned"])
@pytest.mark.parametrize(
    ("what", "type_name", "message"), UNPICKLABLE_EXCEPTIONS, ids=UNPICKLABLE_EXCEPTION_IDS
)
async def test_map_unpicklable_exception_becomes_remote_error_in_its_place(
    what: str, type_name: str, message: str, return_exceptions: bool
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await map_outcome(
            pool,
            workers.value_or_misbehave,
            [1, 2, what, 4, 5],
            return_exceptions=return_exceptions,
        )
        failure = map_failure(received, error, [1, 2], [4, 5], return_exceptions=return_exceptions)
        assert_is_remote_error(failure, type_name, message)
        await assert_pool_serves(pool, pid if return_exceptions else None)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    ("what", "type_name", "message"), UNPICKLABLE_EXCEPTIONS, ids=UNPICKLABLE_EXCEPTION_IDS
)
@pytest.mark.needs(Feature.STREAM)
async def test_stream_unpicklable_exception_becomes_remote_error_and_keeps_the_worker(
    what: str, type_name: str, message: str, kind: str
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await stream_outcome(pool, generator(kind), "before", what, "after")
        assert received == ["before"]
        assert_is_remote_error(error, type_name, message)
        await assert_pool_serves(pool, pid)


# --- an exception with a 10 MiB message ------------------------------------------------------


async def test_run_exception_with_a_10_mib_message_arrives_whole() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        with pytest.raises(ValueError, match=r"^huge message x") as info:
            await pool.run(workers.misbehave, f"huge-error:{HUGE_MESSAGE}")
        assert_is_huge_value_error(info.value)
        await assert_pool_serves(pool, pid)


@pytest.mark.parametrize("return_exceptions", [False, True], ids=["raised", "returned"])
async def test_map_exception_with_a_10_mib_message_arrives_whole_in_its_place(
    return_exceptions: bool,
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await map_outcome(
            pool,
            workers.value_or_misbehave,
            [1, 2, f"huge-error:{HUGE_MESSAGE}", 4, 5],
            return_exceptions=return_exceptions,
        )
        failure = map_failure(received, error, [1, 2], [4, 5], return_exceptions=return_exceptions)
        assert_is_huge_value_error(failure)
        await assert_pool_serves(pool, pid if return_exceptions else None)


@pytest.mark.needs(Feature.STREAM)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_stream_exception_with_a_10_mib_message_arrives_whole(kind: str) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await stream_outcome(
            pool, generator(kind), "before", f"huge-error:{HUGE_MESSAGE}", "after"
        )
        assert received == ["before"]
        assert_is_huge_value_error(error)
        await assert_pool_serves(pool, pid)


# --- results of hundreds of MiB --------------------------------------------------------------


async def test_run_result_of_300_mib_arrives_whole_and_keeps_the_worker() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        result = await pool.run(workers.zeros, BIG_RESULT)
        assert_big_zeros(result, BIG_RESULT)
        del result
        await assert_pool_serves(pool, pid)


async def test_map_result_of_64_mib_arrives_whole_among_small_ones() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await map_outcome(
            pool, workers.zeros, [1, BIG_ITEM, 2], return_exceptions=False
        )
        assert error is None
        assert len(received) == 3
        assert received[0] == b"\0"
        assert_big_zeros(received[1], BIG_ITEM)
        assert received[2] == b"\0\0"
        del received
        await assert_pool_serves(pool, pid)


@pytest.mark.needs(Feature.STREAM)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_stream_item_of_64_mib_arrives_whole_among_small_ones(kind: str) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await stream_outcome(
            pool, generator(kind), "before", f"zeros:{BIG_ITEM}", "after"
        )
        assert error is None
        assert len(received) == 3
        assert received[0] == "before"
        assert_big_zeros(received[1], BIG_ITEM)
        assert received[2] == "after"
        del received
        await assert_pool_serves(pool, pid)


# --- results whose unpickling raises anything, SystemExit included -----------------------------
#
# The parent unpickles what the worker sent: a __reduce__ that calls sys.exit must not end the
# caller's program.


async def test_run_result_whose_unpickling_exits_raises_serialization_error() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        error = await run_error(pool, workers.return_exits_when_unpickled)
        assert type(error) is anypool.SerializationError
        assert "the result of return_exits_when_unpickled" in str(error)
        assert "SystemExit(3)" in str(error)
        assert type(error.__cause__) is SystemExit
        await assert_pool_serves(pool, pid)


@pytest.mark.parametrize("return_exceptions", [False, True], ids=["raised", "returned"])
async def test_map_result_whose_unpickling_exits_raises_serialization_error_in_its_place(
    return_exceptions: bool,
) -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await map_outcome(
            pool,
            workers.exits_when_unpickled_for_negative,
            [1, 2, -1, 3],
            return_exceptions=return_exceptions,
        )
        failure = map_failure(received, error, [1, 4], [9], return_exceptions=return_exceptions)
        assert type(failure) is anypool.SerializationError
        assert "exits_when_unpickled_for_negative" in str(failure)
        # A map that raises cancels its calls still running: the worker may be replaced then.
        await assert_pool_serves(pool, pid if return_exceptions else None)


@pytest.mark.needs(Feature.STREAM)
async def test_stream_item_whose_unpickling_exits_raises_serialization_error() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await stream_outcome(
            pool, workers.yield_exits_when_unpickled_between, "before", "after"
        )
        assert received == ["before"]
        assert type(error) is anypool.SerializationError
        assert "yield_exits_when_unpickled_between" in str(error)
        assert "SystemExit(3)" in str(error)
        await assert_pool_serves(pool, pid)


# --- arguments that pickle here but fail to unpickle in the worker ---------------------------


@pytest.mark.parametrize(
    ("exits", "cause_type"), [(False, "ValueError"), (True, "SystemExit")], ids=["raises", "exits"]
)
@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        ((1, "BAD"), {}, "argument 1"),
        ((1, 2, 3, 4, "BAD"), {}, "argument 4"),
        ((["BAD"],), {}, "argument 0"),
        ((1,), {"good": 2, "bad": "BAD"}, "keyword argument 'bad'"),
    ],
    ids=["second", "fifth-of-five", "inside-a-list", "keyword"],
)
async def test_run_argument_that_fails_to_unpickle_in_the_worker_is_named(
    args: tuple[object, ...], kwargs: dict[str, object], named: str, exits: bool, cause_type: str
) -> None:
    def bad(value: object) -> object:
        if value == "BAD":
            return workers.FailsToUnpickle(exits)
        if isinstance(value, list):
            return [bad(item) for item in value]
        return value

    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        with pytest.raises(anypool.SerializationError) as info:
            await pool.run(
                workers.combine_anything,
                *[bad(value) for value in args],
                **{key: bad(value) for key, value in kwargs.items()},
            )
        message = str(info.value)
        assert message.startswith(f"could not unpickle {named} of a call to combine_anything ")
        if contract().owns_workers:
            assert f"in worker process {pid}" in message
        else:
            # The process that ran the call: one of Ray's, not necessarily the first call's.
            assert re.search(r"in worker process \d+", message), message
        cause = info.value.__cause__
        # A SystemExit arrives as a RemoteError, as it would from the function itself.
        if cause_type == "SystemExit":
            assert isinstance(cause, anypool.RemoteError)
            assert cause.type_name == "SystemExit"
        else:
            assert type(cause).__name__ == cause_type
        assert isinstance(cause.__cause__, anypool.RemoteTraceback)
        await assert_pool_serves(pool, pid)


async def test_map_item_that_fails_to_unpickle_in_the_worker_is_named_in_its_place() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        items = [1, 2, workers.FailsToUnpickle(), 3]
        received, error = await map_outcome(pool, workers.identity, items, return_exceptions=True)
        failure = map_failure(received, error, [1, 2], [3], return_exceptions=True)
        assert type(failure) is anypool.SerializationError
        assert "could not unpickle item 0 of its chunk of a call to identity" in str(failure)
        assert type(failure.__cause__) is ValueError
        await assert_pool_serves(pool, pid)


@pytest.mark.needs(Feature.STREAM)
async def test_stream_argument_that_fails_to_unpickle_in_the_worker_is_named() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        received, error = await stream_outcome(pool, workers.count_up, workers.FailsToUnpickle())
        assert received == []
        assert type(error) is anypool.SerializationError
        assert "could not unpickle argument 0 of a call to count_up" in str(error)
        assert type(error.__cause__) is ValueError
        await assert_pool_serves(pool, pid)


@pytest.mark.needs(Feature.CHANNEL)
async def test_channel_argument_that_fails_to_unpickle_in_the_worker_is_named() -> None:
    async with contract_pool(1) as pool:
        pid = await worker_pid(pool)
        with pytest.raises(anypool.SerializationError) as info:
            async with pool.open_channel(workers.channel_echo_with, workers.FailsToUnpickle()):
                pass
        # The channel's end is argument 0 of the function; the caller's first argument is 1.
        assert "could not unpickle argument 0 of a call to channel_echo_with" in str(info.value)
        assert type(info.value.__cause__) is ValueError
        await assert_pool_serves(pool, pid)
