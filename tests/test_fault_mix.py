"""Random mixes of run, map and stream on one pool, with random cancellations and worker deaths.

Hypothesis draws the mix; the invariants hold whatever it draws: every call that was neither
cancelled nor killed returns exactly its own result, every call whose worker died raises
BrokenWorkerError, and once the pool is closed no process, descriptor or shared-memory segment
of ours remains (the ``no_leaks`` fixture).

The default run draws a few mixes per backend; ANYPOOL_FUZZ_EXAMPLES draws more (a soak step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anypool
import workers

pytestmark = [pytest.mark.anyio, pytest.mark.soak]

EXAMPLES = int(os.environ.get("ANYPOOL_FUZZ_EXAMPLES", "6"))


@dataclass(frozen=True)
class Operation:
    kind: str  # "run", "map" or "stream"
    size: int  # items for map and stream
    seconds: float  # how long each item takes
    die_at: int | None  # the item whose worker dies
    cancel_after: float | None  # seconds before the caller gives up


operations = st.builds(
    Operation,
    kind=st.sampled_from(["run", "map", "stream"]),
    size=st.integers(min_value=1, max_value=6),
    seconds=st.sampled_from([0.0, 0.001, 0.01]),
    die_at=st.none() | st.integers(min_value=0, max_value=5),
    cancel_after=st.none() | st.sampled_from([0.0, 0.002, 0.01, 0.05]),
)


async def perform(pool: anypool.Pool, operation: Operation) -> list[int]:
    """What the caller of ``operation`` receives."""
    die_at = (
        operation.die_at
        if operation.die_at is not None and operation.die_at < operation.size
        else None
    )
    if operation.kind == "run":
        return [await pool.run(workers.work, 7, operation.seconds, die_at is not None)]
    if operation.kind == "map":
        items = [(index, operation.seconds, index == die_at) for index in range(operation.size)]
        async with pool.map(workers.work_on_item, items) as results:
            return [result async for result in results]
    async with pool.stream(workers.work_stream, operation.size, operation.seconds, die_at) as items:
        return [item async for item in items]


def expected(operation: Operation) -> list[int]:
    if operation.kind == "run":
        return [7]
    return list(range(operation.size))


def dies(operation: Operation) -> bool:
    return operation.die_at is not None and operation.die_at < operation.size


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mix=st.lists(operations, min_size=1, max_size=8))
async def test_every_call_gets_its_own_outcome_whatever_else_is_cancelled_or_dies(
    mix: list[Operation],
) -> None:
    outcomes: dict[int, object] = {}

    async def caller(index: int, operation: Operation) -> None:
        with anyio.CancelScope() as scope:
            if operation.cancel_after is not None:
                scope.deadline = anyio.current_time() + operation.cancel_after
            try:
                outcomes[index] = await perform(pool, operation)
            except anypool.BrokenWorkerError as error:
                outcomes[index] = error
        if scope.cancelled_caught:
            outcomes.setdefault(index, "cancelled")

    with anyio.fail_after(60):
        async with anypool.Pool(2, kill_grace=0.5) as pool:
            async with anyio.create_task_group() as group:
                for index, operation in enumerate(mix):
                    group.start_soon(caller, index, operation)
            # The pool is whole afterwards.
            assert await pool.run(workers.square, 5) == 25
            stats = pool.stats()
            assert stats.calls_running == 0

    for index, operation in enumerate(mix):
        outcome = outcomes[index]
        if outcome == "cancelled":
            assert operation.cancel_after is not None
        elif isinstance(outcome, anypool.BrokenWorkerError):
            assert dies(operation), (operation, outcome)
            assert outcome.exitcode == 9
        else:
            assert not dies(operation), (operation, outcome)
            assert outcome == expected(operation), operation
