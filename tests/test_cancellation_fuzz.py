"""Cancellation fuzzing: pool.map and pool.stream stopped at random points.

Each test runs many random scenarios on one pool. A scenario draws its parameters from a seeded
``random.Random`` (ordered or not, chunk size, sync or async input and function, per-item sleeps
of 0 to 5 ms, items that raise, a worker that dies with ``os._exit``, ``return_exceptions``,
``kill_on_cancel``, a stream's buffer), consumes the results, and stops at a random point: after
a random number of results (``break``, an exception in the loop body, a cancellation from the
loop body), at a random deadline (``anyio.move_on_after``), or when another task cancels the
enclosing task group after a random delay. Afterwards:

- what was received is right: the right values, an exact prefix in input order where the
  results are ordered, each item at most once where they are not, the error that ended the
  iteration the one the first failing item calls for;
- the pool counts no call running and no worker busy once things settle, and still runs calls;
- at the end the pool closes within a deadline, and the ``no_leaks`` fixture finds no process,
  descriptor or shared-memory segment left behind.

Timing makes no two runs alike, but the scenarios themselves are reproducible:
``ANYPOOL_FUZZ_SEED`` fixes the seed (else a random one is drawn and shown in every failure
message and in the captured output), and a test draws the same scenarios for the same seed
whatever their number. ``ANYPOOL_FUZZ_ITERATIONS`` sets how many scenarios each test runs
(default: a few, so that the module stays fast; the ``soak`` marker names the tests it scales).
To replay a failure, run the test id it names with the seed it gives, e.g.::

    ANYPOOL_FUZZ_SEED=123 ANYPOOL_FUZZ_ITERATIONS=50 \
        python -m pytest 'tests/test_cancellation_fuzz.py::test_map_...[trio]'

One private attribute is read, where nothing public tells: the source behind dropped results
(alive until their background work has stopped).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import os
import random
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

import anypool
import workers
from support import ASYNCIO_BACKEND_IDS, ASYNCIO_BACKENDS, contract_pool, dead, wait_until_async

SEED_VARIABLE = "ANYPOOL_FUZZ_SEED"
ITERATIONS_VARIABLE = "ANYPOOL_FUZZ_ITERATIONS"

SEED = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))
ITERATIONS = int(os.environ.get(ITERATIONS_VARIABLE) or 0) or None
"""Scenarios per test when set; else each test's own default."""

MAX_WORKERS = 2
EXIT_CODE = 7
MAX_ITEM_SLEEP = 0.005
MAX_ITEMS = 24
# A scenario takes well under a second; one that takes this long has hung.
SCENARIO_DEADLINE = 20.0

pytestmark = [
    pytest.mark.usefixtures("contract_backend"),
    # Not on Ray: each cancellation there costs a new worker process (an actor: some 0.4 s
    # of a CPU), so a fuzz run would mostly measure Ray starting processes. test_ray.py
    # cancels calls at their end in a loop of its own.
    pytest.mark.backends("local"),
    pytest.mark.anyio,
    # A hang fails in a minute rather than after the suite's default timeout, however many
    # scenarios run.
    pytest.mark.timeout(60 + 2 * (ITERATIONS or 0)),
]


def iterations(default: int) -> int:
    return ITERATIONS or default


# --- functions the workers run ---------------------------------------------------------------
#
# Defined inside a function so that cloudpickle sends them by value: a worker does not import
# this module (and pytest with it) to load them. The async ones sleep on whichever event loop
# the worker runs them on (workers._sleep).


def _define_worker_functions() -> tuple[Callable[..., Any], ...]:
    def compute(item: tuple[int, float, str]) -> tuple[str, int]:
        index, seconds, action = item
        if seconds:
            time.sleep(seconds)
        if action == "raise":
            raise ValueError("item failed", index)
        if action == "exit":
            os._exit(EXIT_CODE)
        return ("value", index)

    async def compute_async(item: tuple[int, float, str]) -> tuple[str, int]:
        index, seconds, action = item
        await workers._sleep(seconds)
        if action == "raise":
            raise ValueError("item failed", index)
        if action == "exit":
            os._exit(EXIT_CODE)
        return ("value", index)

    def generate(steps: list[tuple[float, str]]) -> Iterator[int]:
        for index, (seconds, action) in enumerate(steps):
            if seconds:
                time.sleep(seconds)
            if action == "raise":
                raise ValueError("generator failed", index)
            if action == "exit":
                os._exit(EXIT_CODE)
            yield index

    async def generate_async(steps: list[tuple[float, str]]) -> AsyncIterator[int]:
        for index, (seconds, action) in enumerate(steps):
            await workers._sleep(seconds)
            if action == "raise":
                raise ValueError("generator failed", index)
            if action == "exit":
                os._exit(EXIT_CODE)
            yield index

    def at_index(fn: Callable[[Any], Any], items: list[Any], index: int) -> Any:
        return fn(items[index])

    async def at_index_async(fn: Callable[[Any], Any], items: list[Any], index: int) -> Any:
        return await fn(items[index])

    return compute, compute_async, generate, generate_async, at_index, at_index_async


(
    compute,
    compute_async,
    generate,
    generate_async,
    at_index,
    at_index_async,
) = _define_worker_functions()


# --- scenarios -------------------------------------------------------------------------------

# How the consumer holds the results: inside ``async with``; a bare ``async for`` followed by
# ``aclose()`` (in a ``finally``); a bare ``async for`` after which the results are dropped.
STRUCTURES = ["async_with", "bare_aclose", "bare_drop"]
# How the consumer stops: it does not (it takes every result); after ``stop_after`` results by
# ``break``, by an exception of its own, or by cancelling its own scope in the loop body; at a
# random deadline; when another task cancels the task group it runs in after a random delay.
STOPS = ["none", "break", "raise", "cancel_in_body", "move_on_after", "task_group"]


@dataclasses.dataclass
class Scenario:
    seed: int
    kind: str  # "map" or "stream"
    actions: list[str]  # per item: "ok", "raise" or "exit"
    sleeps: list[float]
    fn_kind: str  # "sync" or "async"
    structure: str
    stop: str
    stop_after: int  # results, for "break", "raise" and "cancel_in_body"
    delay: float  # seconds, for "move_on_after" and "task_group"
    kill_on_cancel: bool
    # map only
    ordered: bool = True
    chunksize: int | str = 1
    input_kind: str = "list"  # "list", "generator", "async" or "range"
    return_exceptions: bool = False
    # stream only
    buffer: int | None = None

    def __str__(self) -> str:
        fields = dataclasses.asdict(self)
        fields["sleeps"] = "[" + ", ".join(f"{s * 1000:.1f}ms" for s in self.sleeps) + "]"
        return "Scenario(" + ", ".join(f"{name}={value}" for name, value in fields.items()) + ")"

    @property
    def size(self) -> int:
        return len(self.actions)

    @property
    def first_bad(self) -> int:
        """The index of the first item that raises or exits; the size if none does."""
        return next((i for i, action in enumerate(self.actions) if action != "ok"), self.size)

    @property
    def dying(self) -> int | None:
        return next((i for i, action in enumerate(self.actions) if action == "exit"), None)


def draw_scenario(
    rng: random.Random, kind: str, *, failures: bool = True, death: str = "sometimes"
) -> Scenario:
    """A random scenario. ``death``: "never", "sometimes" or "always" an item that exits."""
    seed = rng.randrange(2**32)
    rng = random.Random(seed)
    size = rng.randint(0, MAX_ITEMS)
    actions = ["ok"] * size
    if failures and size and rng.random() < 0.4:
        for index in rng.sample(range(size), rng.randint(1, min(3, size))):
            actions[index] = "raise"
    if size and (death == "always" or (death == "sometimes" and rng.random() < 0.15)):
        actions[rng.randrange(size)] = "exit"
    if kind == "stream":
        # A generator stops at its first failure: later ones never happen.
        bad = next((i for i, action in enumerate(actions) if action != "ok"), size)
        actions[bad + 1 :] = ["ok"] * (size - bad - 1)
    sleeps = [rng.choice([0.0, rng.uniform(0, MAX_ITEM_SLEEP)]) for _ in range(size)]
    stop = rng.choice(STOPS)
    scenario = Scenario(
        seed=seed,
        kind=kind,
        actions=actions,
        sleeps=sleeps,
        fn_kind=rng.choice(["sync", "async"]),
        structure=rng.choice(STRUCTURES),
        stop=stop,
        stop_after=rng.randint(0, size + 1),
        # Up to about as long as the whole run of the items takes.
        delay=rng.uniform(0, 0.005 + sum(sleeps) / MAX_WORKERS),
        kill_on_cancel=rng.random() < 0.75,
    )
    if kind == "map":
        scenario.ordered = rng.random() < 0.6
        scenario.chunksize = rng.choice([1, 3, "auto"])
        scenario.input_kind = rng.choice(["list", "generator", "async", "range"])
        scenario.return_exceptions = rng.random() < 0.4
    else:
        scenario.buffer = rng.choice([None, 1, 2, 3, 64])
    return scenario


# --- running a scenario ----------------------------------------------------------------------


class ConsumerStop(Exception):
    """Raised by the consumer's own loop body."""


@dataclasses.dataclass
class Outcome:
    received: list[Any] = dataclasses.field(default_factory=list)
    error: BaseException | None = None
    """The exception that ended the iteration (not the consumer's own, not a cancellation)."""
    completed: bool = False
    """The iteration ran to its end."""
    stopped_by_consumer: bool = False
    """The loop body stopped at ``stop_after`` results."""
    dropped: weakref.ref[Any] | None = None
    """The source of the results the consumer dropped without closing them."""


def without_tracebacks(value: Any) -> Any:
    """``value``, and if it is an exception, without the tracebacks of it and of the exceptions
    chained to it: their frames would keep dropped results alive."""
    chain = [value]
    seen: set[int] = set()
    while chain:
        error = chain.pop()
        if isinstance(error, BaseException) and id(error) not in seen:
            seen.add(id(error))
            error.__traceback__ = None
            chain += [error.__cause__, error.__context__]
    return value


async def asynchronously(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        await anyio.sleep(0)
        yield item


def open_results(pool: anypool.Pool, scenario: Scenario) -> Any:
    asynchronous = scenario.fn_kind == "async"
    if scenario.kind == "stream":
        view = pool.with_options(buffer=scenario.buffer)
        steps = list(zip(scenario.sleeps, scenario.actions, strict=True))
        return view.stream(generate_async if asynchronous else generate, steps)
    view = pool.with_options(kill_on_cancel=scenario.kill_on_cancel)
    items = list(zip(range(scenario.size), scenario.sleeps, scenario.actions, strict=True))
    fn: Callable[..., Any] = compute_async if asynchronous else compute
    source: Any = items
    if scenario.input_kind == "generator":
        source = (item for item in items)
    elif scenario.input_kind == "async":
        source = asynchronously(items)
    elif scenario.input_kind == "range":
        # A range goes to the workers in ranges: each index looks its item up there.
        source = range(scenario.size)
        fn = functools.partial(at_index_async if asynchronous else at_index, fn, items)
    return view.map(
        fn,
        source,
        ordered=scenario.ordered,
        chunksize=scenario.chunksize,  # type: ignore[arg-type]
        return_exceptions=scenario.return_exceptions,
    )


async def consume(pool: anypool.Pool, scenario: Scenario, outcome: Outcome) -> None:
    """Consume the results as the scenario says; record what came and how it ended."""
    stop_after = (
        scenario.stop_after if scenario.stop in ("break", "raise", "cancel_in_body") else -1
    )

    async def iterate(results: Any, scope: anyio.CancelScope) -> None:
        if stop_after == 0:
            outcome.stopped_by_consumer = True
            await stop_here(scope)
            return
        async for result in results:
            outcome.received.append(without_tracebacks(result))
            if len(outcome.received) == stop_after:
                outcome.stopped_by_consumer = True
                await stop_here(scope)
                return
        outcome.completed = True

    async def stop_here(scope: anyio.CancelScope) -> None:
        if scenario.stop == "raise":
            raise ConsumerStop
        if scenario.stop == "cancel_in_body":
            scope.cancel()
            await anyio.sleep_forever()

    with anyio.CancelScope() as scope:
        try:
            if scenario.structure == "async_with":
                async with open_results(pool, scenario) as results:
                    await iterate(results, scope)
            elif scenario.structure == "bare_aclose":
                results = open_results(pool, scenario)
                try:
                    await iterate(results, scope)
                finally:
                    await results.aclose()
            else:
                results = open_results(pool, scenario)
                # The results hold this (private) source, and so does their background work
                # until it has stopped.
                outcome.dropped = weakref.ref(results._source)
                try:
                    await iterate(results, scope)
                finally:
                    del results
        except ConsumerStop:
            pass
        except Exception as error:
            outcome.error = without_tracebacks(error)


async def run_scenario(pool: anypool.Pool, scenario: Scenario, outcome: Outcome) -> None:
    if scenario.stop == "move_on_after":
        with anyio.move_on_after(scenario.delay):
            await consume(pool, scenario, outcome)
    elif scenario.stop == "task_group":
        async with anyio.create_task_group() as group:
            group.start_soon(consume, pool, scenario, outcome)
            await anyio.sleep(scenario.delay)
            group.cancel_scope.cancel()
    else:
        await consume(pool, scenario, outcome)


# --- checking the outcome --------------------------------------------------------------------


def is_item_error(value: object, index: int | None = None, what: str = "item failed") -> bool:
    return (
        type(value) is ValueError
        and len(value.args) == 2
        and value.args[0] == what
        and (index is None or value.args[1] == index)
    )


def is_broken_worker(value: object) -> bool:
    return isinstance(value, anypool.BrokenWorkerError) and value.exitcode == EXIT_CODE


def describe(value: object) -> str:
    if isinstance(value, BaseException):
        return f"{type(value).__name__}{value.args!r}"
    return repr(value)


def check_common(scenario: Scenario, outcome: Outcome) -> None:
    if scenario.stop == "none":
        assert outcome.completed or outcome.error is not None, "the iteration stopped by itself"
    if outcome.completed:
        assert outcome.error is None
    if outcome.stopped_by_consumer:
        assert len(outcome.received) == scenario.stop_after, "stopped at the wrong result"
        assert outcome.error is None
    if outcome.error is not None and not (
        is_item_error(outcome.error) or is_item_error(outcome.error, what="generator failed")
    ):
        assert is_broken_worker(outcome.error), (
            f"unexpected error {describe(outcome.error)}: {outcome.error}"
        )
        assert scenario.dying is not None, "BrokenWorkerError without a dying item"


def check_stream(scenario: Scenario, outcome: Outcome) -> None:
    received, bad = outcome.received, scenario.first_bad
    assert received == list(range(len(received))), "the items are not an exact prefix"
    assert len(received) <= bad, "items past the generator's failure"
    if outcome.completed:
        assert bad == scenario.size, "the stream ended without the generator's error"
        assert len(received) == scenario.size, "the stream ended early"
    if outcome.error is not None:
        if scenario.actions[bad] == "raise":
            assert is_item_error(outcome.error, bad, "generator failed")
        else:
            assert is_broken_worker(outcome.error)
        assert len(received) == bad, "the error came before the items yielded before it"


def max_chunk(scenario: Scenario) -> int:
    """The most items a chunk of the map can hold."""
    if isinstance(scenario.chunksize, int):
        return scenario.chunksize
    return max(1, scenario.size)  # "auto" may put all the items in one chunk


def check_ordered_map(scenario: Scenario, outcome: Outcome) -> None:
    received, actions = outcome.received, scenario.actions
    if not scenario.return_exceptions:
        bad = scenario.first_bad
        expected = [("value", index) for index in range(len(received))]
        assert received == expected, "the results are not an exact prefix"
        assert len(received) <= bad, "results past the first failing item"
        if outcome.completed:
            assert bad == scenario.size, "the map ended without the failing item's error"
            assert len(received) == scenario.size, "the map ended early"
        if outcome.error is not None:
            if actions[bad] == "raise":
                assert is_item_error(outcome.error, bad)
                assert len(received) == bad, "the error came before the results before it"
            else:
                # The whole chunk holding the dying item fails, from its first item on.
                assert is_broken_worker(outcome.error)
                assert len(received) > bad - max_chunk(scenario), "the error came too early"
        return
    assert outcome.error is None, "return_exceptions=True raised"
    broken: list[int] = []
    for index, value in enumerate(received):
        if is_broken_worker(value):
            broken.append(index)
        elif actions[index] == "ok":
            assert value == ("value", index), f"wrong result at {index}: {describe(value)}"
        elif actions[index] == "raise":
            assert is_item_error(value, index), f"wrong error at {index}: {describe(value)}"
        else:
            raise AssertionError(f"the dying item {index} gave {describe(value)}")
    if broken:
        dying = scenario.dying
        assert dying is not None, "BrokenWorkerError without a dying item"
        assert broken == list(range(broken[0], broken[-1] + 1)), "BrokenWorkerErrors not one chunk"
        assert dying - max_chunk(scenario) < broken[0] <= dying, "BrokenWorkerError off its chunk"
        assert broken[-1] < dying + max_chunk(scenario), "BrokenWorkerError off its chunk"
    if outcome.completed:
        assert len(received) == scenario.size, "the map ended early"


def check_unordered_map(scenario: Scenario, outcome: Outcome) -> None:
    received, actions = outcome.received, scenario.actions
    seen: list[int] = []
    broken = 0
    for value in received:
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "value":
            assert 0 <= value[1] < scenario.size, f"a result for no item: {value!r}"
            assert actions[value[1]] == "ok", f"a result for failing item {value[1]}"
            seen.append(value[1])
        elif scenario.return_exceptions and is_item_error(value):
            assert actions[value.args[1]] == "raise", f"an error for item {value.args[1]}"  # type: ignore[attr-defined]
            seen.append(value.args[1])  # type: ignore[attr-defined]
        elif scenario.return_exceptions and is_broken_worker(value):
            assert scenario.dying is not None, "BrokenWorkerError without a dying item"
            broken += 1
        else:
            raise AssertionError(f"unexpected result {describe(value)}")
    assert len(seen) == len(set(seen)), "an item's outcome came twice"
    assert broken <= max_chunk(scenario), "more BrokenWorkerErrors than one chunk holds"
    if scenario.return_exceptions:
        assert outcome.error is None, "return_exceptions=True raised"
        if outcome.completed:
            assert len(received) == scenario.size, "the map ended early"
            assert (broken > 0) == (scenario.dying is not None)
    else:
        if outcome.completed:
            assert scenario.first_bad == scenario.size, "the map ended without an item's error"
            assert sorted(seen) == list(range(scenario.size)), "the map ended early"
        if outcome.error is not None and is_item_error(outcome.error):
            assert actions[outcome.error.args[1]] == "raise", "an error for an item that succeeds"


def check_outcome(scenario: Scenario, outcome: Outcome) -> None:
    check_common(scenario, outcome)
    if scenario.kind == "stream":
        check_stream(scenario, outcome)
    elif scenario.ordered:
        check_ordered_map(scenario, outcome)
    else:
        check_unordered_map(scenario, outcome)


def settled(pool: anypool.Pool) -> bool:
    """Whether every call the pool accepted has finished and no worker is busy.

    Reads the pool's private count of accepted calls (what ``join()`` waits for): ``stats()``
    does not show a call that waits for a worker or for one to start.
    """
    stats = pool.stats()
    return stats.calls_pending == 0 and stats.workers_busy == 0


def ending(outcome: Outcome) -> str:
    """How the iteration ended, for the summary of a test's scenarios."""
    if outcome.completed:
        return "completed"
    if outcome.error is not None:
        return type(outcome.error).__name__
    if outcome.stopped_by_consumer:
        return "stopped by the consumer"
    return "cancelled"


async def check_pool_settles(pool: anypool.Pool, scenario: Scenario, outcome: Outcome) -> None:
    """Nothing runs once the consumer is out; the pool still serves calls."""
    dropped = outcome.dropped
    if dropped is not None:
        # Dropped results stop their work in the background, once collected.
        def stopped() -> bool:
            gc.collect()
            return dropped() is None and settled(pool)

        assert await wait_until_async(stopped), f"never settled: {pool.stats()}, {dropped()}"
    else:
        # Leaving ``async with`` or aclose() returns once the calls have stopped...
        assert pool.stats().calls_running == 0, f"calls still running: {pool.stats()}"
        if scenario.kill_on_cancel or scenario.kind == "stream":
            assert settled(pool), f"work left running: {pool.stats()}"
        # ... but a call abandoned with kill_on_cancel=False finishes in the background.
        assert await wait_until_async(lambda: settled(pool)), f"never settled: {pool.stats()}"
    assert await pool.run(workers.square, 7) == 49
    stats = pool.stats()
    assert stats.calls_running == 0, stats
    assert stats.workers_alive <= MAX_WORKERS, stats


# --- the fuzzing loop ------------------------------------------------------------------------


async def fuzz(
    request: pytest.FixtureRequest,
    count: int,
    draw: Callable[[random.Random], Scenario],
) -> None:
    rng = random.Random(f"{SEED}:{request.node.name}")
    started = time.monotonic()
    endings: collections.Counter[str] = collections.Counter()
    async with contract_pool(MAX_WORKERS) as pool:
        for iteration in range(count):
            scenario = draw(rng)
            context = f"[{SEED_VARIABLE}={SEED} {request.node.nodeid} #{iteration}] {scenario}"
            # Shown by pytest if the test fails or times out.
            print(context)
            outcome = Outcome()
            try:
                with anyio.fail_after(SCENARIO_DEADLINE):
                    await run_scenario(pool, scenario, outcome)
                    check_outcome(scenario, outcome)
                    await check_pool_settles(pool, scenario, outcome)
            except (AssertionError, TimeoutError) as error:
                received = [describe(value) for value in outcome.received]
                raise AssertionError(
                    f"{context}\nreceived {received}, error {describe(outcome.error)}, "
                    f"completed {outcome.completed}\n{error}"
                ) from error
            endings[ending(outcome)] += 1
        pool.close()
        with anyio.fail_after(10):
            await pool.join()
    print(f"{count} scenarios in {time.monotonic() - started:.2f} s: {dict(endings)}")


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.soak
async def test_map_cancelled_at_random_points_stays_correct(request: pytest.FixtureRequest) -> None:
    await fuzz(request, iterations(20), lambda rng: draw_scenario(rng, "map", death="never"))


@pytest.mark.soak
async def test_stream_cancelled_at_random_points_stays_correct(
    request: pytest.FixtureRequest,
) -> None:
    await fuzz(request, iterations(20), lambda rng: draw_scenario(rng, "stream", death="never"))


@pytest.mark.soak
async def test_map_with_a_worker_dying_at_a_random_item(request: pytest.FixtureRequest) -> None:
    def draw(rng: random.Random) -> Scenario:
        scenario = draw_scenario(rng, "map", failures=rng.random() < 0.3, death="always")
        # Mostly let the death show; sometimes stop before or around it.
        if rng.random() < 0.6:
            scenario.stop = "none"
        return scenario

    await fuzz(request, iterations(10), draw)


@pytest.mark.soak
async def test_stream_with_a_worker_dying_at_a_random_item(request: pytest.FixtureRequest) -> None:
    def draw(rng: random.Random) -> Scenario:
        scenario = draw_scenario(rng, "stream", failures=False, death="always")
        if rng.random() < 0.6:
            scenario.stop = "none"
        return scenario

    await fuzz(request, iterations(10), draw)


# --- bugs the fuzz tests found ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_stream_delivers_the_items_yielded_before_its_worker_died(kind: str) -> None:
    # Found by the fuzz tests: the parent owed the worker a credit after every 32 items, and
    # when the worker had exited, the failed send ended the stream before the items still in
    # the pipe.
    steps = [(0.0, "ok")] * 40 + [(0.0, "exit")]
    received: list[int] = []
    async with contract_pool(1) as pool:
        pid = await pool.run(workers.current_pid)  # the one worker, which then runs the stream

        async def consume_slowly() -> None:
            async for item in pool.stream(generate if kind == "sync" else generate_async, steps):
                received.append(item)
                if item == 0:
                    # The generator yields every item (the default buffer, 64, lets it), and
                    # its worker exits, before the parent reads the second.
                    assert await wait_until_async(lambda: dead(pid))

        with pytest.raises(anypool.BrokenWorkerError) as info:
            await consume_slowly()
        assert info.value.exitcode == EXIT_CODE
        assert await pool.run(workers.square, 3) == 9
    assert received == list(range(40))


# On asyncio the consumer is sure to leave before the chunk's task runs (tasks run in the
# order they were woken); trio may run that task first, and then the chunk is sent before the
# consumer leaves, and rightly killed.
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS, ids=ASYNCIO_BACKEND_IDS)
async def test_leaving_a_map_sends_no_chunk_whose_task_had_not_run_yet() -> None:
    # Found by the fuzz tests: such a chunk took an idle worker (no checkpoint on the way), was
    # sent to it, and the cancellation then killed that worker.
    async with contract_pool(MAX_WORKERS) as pool:
        await pool.run(workers.square, 1)  # a warm, idle worker
        for _ in range(5):
            next_item_taken = anyio.Event()

            async def items(event: anyio.Event = next_item_taken) -> AsyncIterator[int]:
                yield 0
                yield 1
                event.set()
                yield 2

            # One item in flight at most: when the consumer has 1, nothing runs; the map takes
            # 2 from the input and starts its chunk's task, and the consumer leaves before that
            # task has run.
            async with pool.map(workers.identity, items(), max_in_flight=1) as results:
                async for result in results:
                    if result == 1:
                        await next_item_taken.wait()
                        break
            assert await pool.run(workers.square, 3) == 9
        stats = pool.stats()
    assert (stats.calls_cancelled, stats.workers_replaced) == (0, 0)
