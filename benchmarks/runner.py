"""Measure one contender in this process, every scenario that applies to it: prints JSON.

    python -m benchmarks.runner CONTENDER WORKERS quick|full REPEAT SCENARIO [SCENARIO ...]

The benchmark runs each contender in a fresh interpreter of its own, so that no peer's
threads, helper processes or imported state weigh on another's numbers. Within it, each run
opens one session (a pool) on a fresh event loop and measures the scenarios one after the
other, each starting with a warm-up; memory is measured first, before the others grow it.
"""

from __future__ import annotations

import json
import statistics
import sys
import traceback
from typing import Any

import anyio

from benchmarks import contenders, engines, scenarios

MEASUREMENT_TIMEOUT = {"quick": 60.0, "full": 600.0}
"""Seconds one scenario may take before it counts as failed."""


def _error(error: BaseException) -> str:
    # The error itself, not the task groups around it.
    while len(getattr(error, "exceptions", ())) == 1:
        error = error.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(error).__name__}: {error}"


def measure(
    contender: contenders.Contender,
    chosen: list[scenarios.Scenario],
    backend: str,
    workers: int,
    sizes: scenarios.Sizes,
    timeout: float,
) -> dict[str, dict[str, float | str]]:
    """For each scenario, the medians of its metrics over ``sizes.repeat`` runs."""

    async def one_run() -> dict[str, dict[str, float] | str]:
        outcome: dict[str, dict[str, float] | str] = {}
        async with contender.open(workers) as session:
            for scenario in chosen:
                assert scenario.measure is not None
                try:
                    with anyio.fail_after(timeout):
                        outcome[scenario.key] = await scenario.measure(session, workers, sizes)
                except Exception as error:
                    traceback.print_exc()
                    outcome[scenario.key] = _error(error)
        return outcome

    runs = []
    for _ in range(sizes.repeat):
        try:
            runs.append(anyio.run(one_run, backend=backend))
        except Exception as error:  # opening or closing the session failed
            traceback.print_exc()
            return {scenario.key: {"error": _error(error)} for scenario in chosen}
    results: dict[str, dict[str, float | str]] = {}
    for scenario in chosen:
        outcomes = [run[scenario.key] for run in runs]
        failures = [outcome for outcome in outcomes if isinstance(outcome, str)]
        if failures:
            results[scenario.key] = {"error": failures[0]}
            continue
        measured = [outcome for outcome in outcomes if not isinstance(outcome, str)]
        results[scenario.key] = {
            key: statistics.median(outcome[key] for outcome in measured) for key in measured[0]
        }
    return results


def main() -> None:
    name, workers, size, repeat = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    sizes = scenarios.sizes(size, repeat)
    contender = engines.contender(name) or contenders.by_name(name)
    contenders.import_peer(contender)
    wanted = set(sys.argv[5:])
    chosen = [
        scenario
        for scenario in [*scenarios.SCENARIOS, *engines.SCENARIOS]
        if scenario.key in wanted and scenario.measure is not None and scenario.applies(contender)
    ]
    # Memory first: the other scenarios grow the parent.
    chosen.sort(key=lambda scenario: scenario.key != "memory")
    results: dict[str, dict[str, Any]] = {scenario.key: {} for scenario in chosen}
    for backend in contender.backends:
        measured = measure(contender, chosen, backend, workers, sizes, MEASUREMENT_TIMEOUT[size])
        for key, metrics in measured.items():
            results[key][backend] = metrics
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
