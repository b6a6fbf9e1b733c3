"""The benchmark's report: a summary on the terminal, a Markdown page and its plots."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from pathlib import Path
from typing import Any

import anypool
from benchmarks import contenders, engines, on_dask, on_ray
from benchmarks.scenarios import SCENARIOS, EngineSection, Metric, Scenario, Sizes

SCALING_CONTENDERS = ("anypool", "multiprocessing.Pool", "ProcessPoolExecutor")
"""Measured at each worker count: anypool and the peers fastest at map."""

ANYPOOL_ROWS = tuple(c.name for c in contenders.CONTENDERS if c.is_anypool)


@dataclasses.dataclass
class Run:
    quick: bool
    workers: int
    sizes: Sizes
    results: dict[str, dict[str, Any]]
    """contender -> scenario -> backend -> metric -> value (or ``{"error": ...}``)."""
    scaling: dict[int, dict[str, Any]]
    """workers -> contender -> scenario -> backend -> metric -> value."""
    floor: dict[str, float]
    seconds: float
    engines: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    """The engine sections': group (``"ray"``, ``"dask"``) -> contender -> scenario -> backend
    -> metric -> value."""

    def measured(self, section: EngineSection) -> dict[str, dict[str, Any]]:
        """An engine section's results: contender -> scenario -> backend -> metric -> value;
        empty where it did not run."""
        return self.engines.get(section.group, {})

    def engine_sections(self) -> list[EngineSection]:
        """The engine sections this run measured, in the report's order."""
        return [section for section in engines.SECTIONS if self.measured(section)]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """anypool's value for one metric on one event loop, and the best peer's."""

    scenario: Scenario
    metric: Metric
    backend: str
    anypool_row: str
    value: float
    best_peer: str | None
    best_value: float | None

    @property
    def ratio(self) -> float | None:
        if self.best_value is None or self.best_value == 0:
            return None
        return self.value / self.best_value

    @property
    def ratio_text(self) -> str:
        return "-" if self.ratio is None else f"{self.ratio:.2f}x"

    @property
    def variant(self) -> str:
        """How this anypool row differs from plain anypool, for labels."""
        return self.anypool_row.removeprefix("anypool")

    @property
    def goal(self) -> float | None:
        """What this anypool row aims for (see Metric.goal)."""
        variant = self.variant.strip(" ()")
        return dict(self.metric.variant_goals).get(variant, self.metric.goal)

    @property
    def met(self) -> bool | None:
        measured = self.value if self.metric.absolute else self.ratio
        goal = self.goal
        if measured is None or goal is None:
            return None
        return measured <= goal if self.metric.better == "lower" else measured >= goal


def value(
    results: dict[str, Any], name: str, scenario: str, backend: str, metric: str
) -> float | None:
    found = results.get(name, {}).get(scenario, {}).get(backend, {}).get(metric)
    return found if isinstance(found, (int, float)) else None


def comparisons(run: Run) -> list[Comparison]:
    found = []
    for scenario in SCENARIOS:
        for metric in scenario.metrics:
            for backend in ("asyncio", "trio"):
                peers = {
                    name: v
                    for name in run.results
                    if name not in ANYPOOL_ROWS
                    and (metric.against is None or name in metric.against)
                    and (v := value(run.results, name, scenario.key, backend, metric.key))
                    is not None
                }
                best = None
                if peers:
                    pick = min if metric.better == "lower" else max
                    best = pick(peers, key=peers.__getitem__)
                for row in ANYPOOL_ROWS:
                    mine = value(run.results, row, scenario.key, backend, metric.key)
                    if mine is None:
                        continue
                    found.append(
                        Comparison(
                            scenario,
                            metric,
                            backend,
                            row,
                            mine,
                            best,
                            None if best is None else peers[best],
                        )
                    )
    return found


def engine_comparisons(run: Run, section: EngineSection) -> list[Comparison]:
    """anypool on an engine against the engine's own API, on each event loop anypool ran on;
    where the engine's own API runs on asyncio only (Ray's refs, Dask's asynchronous client),
    on trio against its asyncio figure. A scenario without the engine's own figure (Dask has no
    generator tasks) compares with nothing."""
    measured = run.measured(section)
    anypool_name, native_name = section.anypool.name, section.native.name
    found = []
    for scenario in section.scenarios:
        for metric in scenario.metrics:
            for backend in ("asyncio", "trio"):
                mine = value(measured, anypool_name, scenario.key, backend, metric.key)
                if mine is None:
                    continue
                native_runs = measured.get(native_name, {}).get(scenario.key, {})
                native_backend = backend if backend in native_runs else "asyncio"
                native = value(measured, native_name, scenario.key, native_backend, metric.key)
                found.append(
                    Comparison(
                        scenario,
                        metric,
                        backend,
                        anypool_name,
                        mine,
                        None
                        if native is None
                        else native_name
                        + ("" if native_backend == backend else f" ({native_backend})"),
                        native,
                    )
                )
    return found


def _number(x: float | None, unit: str = "", *, with_unit: bool = True) -> str:
    if x is None:
        return "-"
    if unit == "":
        # Four places: an efficiency of 0.9697 against a goal of 0.97 must not read as 0.970.
        text = f"{x:.4f}"
    elif abs(x) >= 1000:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}"
    return f"{text} {unit}".strip() if with_unit else text


def _verdict(comparison: Comparison) -> str:
    goal = comparison.goal
    if goal is None or comparison.met is None:
        return ""
    sign = "≤" if comparison.metric.better == "lower" else "≥"
    target = f"{goal:.2g}" if comparison.metric.absolute else f"{goal:.2g}x"
    return f"goal {sign} {target}: {'met' if comparison.met else 'NOT met'}"


def summary(run: Run) -> str:
    lines = [
        f"anypool benchmark ({'quick' if run.quick else 'full'}), {run.workers} workers, "
        f"{run.seconds:.0f} s",
        f"floor: pipe round trip {run.floor['pipe_round_trip_us']:.1f} µs, "
        f"memcpy of {run.sizes.big_bytes >> 20} MiB {run.floor['memcpy_ms']:.2f} ms",
    ]
    local = comparisons(run)
    if local:
        lines.append(f"{'scenario':44s} {'loop':8s} {'anypool':>14s} {'best peer':>14s}  ratio")
    for c in local:
        label = f"{c.scenario.key}: {c.metric.label}{c.variant}"
        lines.append(
            f"{label[:44]:44s} {c.backend:8s} {_number(c.value, c.metric.unit):>14s} "
            f"{_number(c.best_value, c.metric.unit):>14s}  {c.ratio_text:6s} {c.best_peer or ''} "
            f"{_verdict(c)}"
        )
    for section in run.engine_sections():
        found = engine_comparisons(run, section)
        if found:
            lines.append(
                f"{section.engine + ' section':44s} {'loop':8s} {'anypool':>14s} "
                f"{section.engine + ' own API':>14s}  ratio"
            )
        for c in found:
            label = f"{c.scenario.key}: {c.metric.label}"
            lines.append(
                f"{label[:44]:44s} {c.backend:8s} {_number(c.value, c.metric.unit):>14s} "
                f"{_number(c.best_value, c.metric.unit):>14s}  {c.ratio_text:6s} {_verdict(c)}"
            )
    return "\n".join(lines)


# --- the Markdown page -----------------------------------------------------------------------


def _machine() -> list[str]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB of memory"
    except (OSError, ValueError, IndexError):
        pass
    return [
        f"- Machine: {model}, {os.cpu_count()} CPUs ({anypool.cpu_count()} usable){memory}",
        f"- System: {platform.platform()}",
        f"- Python {contenders.python_version()}",
    ]


def _scenario_table(run: Run, scenario: Scenario) -> list[str]:
    backends = [
        backend
        for backend in ("asyncio", "trio")
        if any(backend in r.get(scenario.key, {}) for r in run.results.values())
    ]
    header = ["contender"] + [
        f"{m.label} ({b})" + (f", {m.unit}" if m.unit else "")
        for m in scenario.metrics
        for b in backends
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, measured in run.results.items():
        if scenario.key not in measured:
            continue
        cells = [f"**{name}**" if name in ANYPOOL_ROWS else name]
        for metric in scenario.metrics:
            for backend in backends:
                entry = measured[scenario.key].get(backend)
                if entry is None:
                    cells.append("n/a")
                elif "error" in entry:
                    cells.append("error: " + str(entry["error"])[:60].replace("|", "/"))
                else:
                    cells.append(_number(entry.get(metric.key), metric.unit, with_unit=False))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _floor_lines(run: Run, scenario: Scenario) -> list[str]:
    floors = {
        "round_trip": ("a raw pipe round trip", run.floor["pipe_round_trip_us"], "µs", "median"),
        "bytes": ("two copies of the payload", 2 * run.floor["memcpy_ms"], "ms", "seconds"),
        "array": ("two copies of the payload", 2 * run.floor["memcpy_ms"], "ms", "seconds"),
    }
    if scenario.key not in floors:
        return []
    what, amount, unit, key = floors[scenario.key]
    parts = []
    for backend in ("asyncio", "trio"):
        mine = value(run.results, "anypool", scenario.key, backend, key)
        if mine is not None:
            parts.append(f"{backend} {mine / amount:.1f}x")
    return [f"Floor: {what} takes {_number(amount, unit)} here; anypool takes " + ", ".join(parts)]


def _today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def write(run: Run, output: Path) -> Path:
    """Write ``benchmarks.md`` and its plots into ``output``; the page's path. A run of engine
    sections alone (``--only ray``, ``--only dask``) replaces those sections of a page that is
    there already, and only those (a section the page lacks goes at its end)."""
    output.mkdir(parents=True, exist_ok=True)
    page = output / "benchmarks.md"
    measured_sections = run.engine_sections()
    if measured_sections and not run.results and page.exists():
        text = page.read_text()
        for section in measured_sections:
            text = _replace_section(text, section.heading, _engine_section(run, section))
        page.write_text(text.rstrip() + "\n")
        return page
    plots = output / "benchmarks"
    plots.mkdir(exist_ok=True)
    sizes = run.sizes
    today = _today()
    lines = [
        "# Benchmarks: anypool and its peers",
        "",
        "Written by `make bench` (`python -m benchmarks`); every number below comes from one run"
        " on one machine, so the ratios compare like with like. Medians of"
        f" {sizes.repeat} runs; each contender ran in a fresh interpreter with {run.workers}"
        " workers, on asyncio and on trio where it supports it. Peers run with their"
        " cancellation option switched on where they have one (anyio.to_process"
        " `cancellable=True`, trio-parallel `kill_on_cancel=True`, pebble's future `cancel()`),"
        " their default start method, and for `map` the chunk size multiprocessing's `Pool.map`"
        " picks (items / (4 x workers)). anypool runs with its defaults (the forkserver start"
        ' method, `chunksize="auto"`); two more rows show it used otherwise where that is the'
        " point: `anypool (batches)` takes map's results with `results.batches()`, and"
        " `anypool (fork)` starts its workers with the fork start method (cold first call"
        " only)." + _engines_sentence(measured_sections),
        "",
        f"- Date: {today}{' (quick mode: sizes too small to mean much)' if run.quick else ''}",
        *_machine(),
        f"- anypool {contenders.by_name('anypool').version()}; peers: "
        + ", ".join(
            f"{c.name} {c.version()}"
            for c in contenders.CONTENDERS
            if c.name not in ANYPOOL_ROWS and c.name in run.results
        ),
        f"- The whole run took {run.seconds / 60:.1f} minutes.",
        "",
    ]
    if run.results:
        lines += _local_sections(run, plots)
    for section in measured_sections:
        lines += _engine_section(run, section)
    page.write_text("\n".join(lines).rstrip() + "\n")
    return page


def _local_sections(run: Run, plots: Path) -> list[str]:
    """anypool against its peers: the comparisons, each scenario's table, the scaling."""
    sizes = run.sizes
    lines = [
        "## anypool against the best peer",
        "",
        "| scenario | event loop | anypool | best peer | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.scenario.title}: {c.metric.label}{c.variant} | {c.backend} | "
        f"{_number(c.value, c.metric.unit)} | "
        f"{_number(c.best_value, c.metric.unit)} ({c.best_peer or 'none'}) | {c.ratio_text} | "
        f"{_verdict(c)} |"
        for c in comparisons(run)
    ]
    lines += [
        "",
        f"Sizes: {sizes.round_trips} sequential calls for the round trip; "
        f"{sizes.concurrent_calls} concurrent calls; map over {sizes.map_items:,} items; "
        f"{sizes.cpu_tasks} tasks of {sizes.cpu_seconds * 1e3:.0f} ms of CPU each; "
        f"{sizes.big_bytes >> 20} MiB payloads; {sizes.stream_items:,} streamed ints; "
        f"busy calls of {sizes.busy_seconds} s cancelled after 0.3 s.",
        "",
    ]
    for scenario in SCENARIOS:
        if not any(scenario.key in r for r in run.results.values()):
            continue
        lines += [f"## {scenario.title}", "", *_scenario_table(run, scenario), ""]
        lines += [*_floor_lines(run, scenario), ""]
        if _plot_scenario(run, scenario, plots / f"{scenario.key}.png"):
            lines += [f"![{scenario.title}](benchmarks/{scenario.key}.png)", ""]
    lines += _scaling_section(run, plots / "scaling.png")
    return lines


def _engines_sentence(sections: list[EngineSection]) -> str:
    """What the page's introduction says of its engine sections, if it has any."""
    if not sections:
        return ""
    if len(sections) == 1:
        engine = sections[0].engine
        return f" The last section compares anypool's {engine} backend with {engine}'s own API."
    names = " and ".join(section.engine for section in sections)
    return (
        f" The last {len(sections)} sections compare anypool's {names} backends with each"
        " engine's own API."
    )


RAY_HEADING = on_ray.SECTION.heading
DASK_HEADING = on_dask.SECTION.heading


def _engine_section(run: Run, section: EngineSection) -> list[str]:
    """An engine section of the page: how it was measured, then anypool against the engine's
    own API, scenario by scenario, and the errors, if any."""
    measured = run.measured(section)
    if not measured:
        return []
    lines = [
        section.heading,
        "",
        *_INTRODUCTIONS[section.group](run),
        "",
        f"| scenario | event loop | {section.anypool.name} | {section.native.name} | ratio"
        " | goal |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c.scenario.title}: {c.metric.label} | {c.backend} | "
        f"{_number(c.value, c.metric.unit)} | "
        f"{_number(c.best_value, c.metric.unit)}"
        f"{c.best_peer.removeprefix(section.native.name) if c.best_peer else ''} | "
        f"{c.ratio_text} | {_verdict(c)} |"
        for c in engine_comparisons(run, section)
    ]
    errors = [
        f"- error: {name}, {key} ({backend}): {entry['error']}"
        for name, results in measured.items()
        for key, backends in results.items()
        for backend, entry in backends.items()
        if "error" in entry
    ]
    return [*lines, "", *errors, *([""] if errors else [])]


def _ray_introduction(run: Run) -> list[str]:
    sizes = run.sizes
    return [
        "The same work through anypool's `RayBackend`"
        f" (`anypool.Pool(max_workers={run.workers}, backend=RayBackend())`) and through Ray's own"
        " API: a `@ray.remote(max_retries=0)` function per task function, its ref awaited"
        " (`await f.remote()`); a cancelled call killed with `ray.cancel(ref, force=True)` and"
        " its ref awaited until it raises (anypool kills the call's worker actor, `ray.kill`,"
        " without waiting for Ray's confirmation: the next call goes to an idle worker while a"
        ' new one starts); a `num_returns="streaming"` generator read with'
        " `async for ref in gen: await ref`, against `pool.stream(fn, n)` with its default"
        " buffer. Each contender ran in a fresh interpreter, and each of its runs started a"
        f" local Ray of its own (`ray.init(num_cpus={run.workers}, include_dashboard=False,"
        " log_to_driver=False)`), warmed it up before timing, and shut it down: neither"
        " measured with the other's warm workers. Ray's refs can be awaited on asyncio only:"
        " anypool's trio figures are compared with Ray's own API on asyncio.",
        "",
        f"- Date: {_today()}{' (quick mode: sizes too small to mean much)' if run.quick else ''};"
        f" Ray {on_ray.SECTION.native.version()}, a local Ray of {run.workers} CPUs;"
        f" medians of {sizes.repeat} runs.",
        f"- Sizes: {sizes.round_trips} sequential calls for the round trip;"
        f" {sizes.ray_cancels} cancel-then-next-call cycles (a sleeping call cancelled once it"
        " runs, every worker up at the start of each: the mean per cycle);"
        f" {sizes.ray_stream_items:,} streamed ints.",
        "- Goals: anypool's per-task overhead within 1.2x of Ray's own API (the round trip's"
        " median, the cancel-then-next-call cycle); its stream at least as fast as Ray's own.",
    ]


def _dask_introduction(run: Run) -> list[str]:
    sizes = run.sizes
    return [
        "The same work through anypool's `DaskBackend`"
        f" (`anypool.Pool(max_workers={run.workers}, backend=DaskBackend(client))` on a"
        ' synchronous `Client`, its default `cancel="kill"`: each call runs in a child process'
        " of its Dask worker, killed when the call is cancelled) and through Dask's own API on"
        " an asynchronous `Client` (`Client(address, asynchronous=True)`):"
        " `await client.submit(fn, *args, pure=False)`; a cancelled call's future cancelled with"
        " `future.cancel()`, which does not stop a task that runs"
        " ([dask/distributed#4694](https://github.com/dask/distributed/issues/4694)): the next"
        " task on its worker waits until it ends by itself. Each contender ran in a fresh"
        " interpreter, and each of its runs started a `LocalCluster` of its own"
        f" (`n_workers={run.workers}, threads_per_worker=1, processes=True`, with"
        " `distributed.scheduler.allowed-failures` 0), warmed it up before timing, and closed"
        " it: neither measured with the other's warm workers. Dask's asynchronous client serves"
        " asyncio only: anypool's trio figures are compared with Dask's own API on asyncio.",
        "",
        f"- Date: {_today()}{' (quick mode: sizes too small to mean much)' if run.quick else ''};"
        f" Dask distributed {on_dask.SECTION.native.version()}, a LocalCluster of"
        f" {run.workers} workers; medians of {sizes.repeat} runs.",
        f"- Sizes: {sizes.round_trips} sequential calls for the round trip;"
        f" {sizes.dask_cancels} cancel-then-next-call cycles (every worker busy with a call that"
        f" sleeps {on_dask.LONG_CALL_SECONDS:g} s, all of them cancelled once they run, so that"
        " the next call has to use a worker whose call was cancelled; every worker free at the"
        " start of each: the mean per cycle); under Dask's own API the next call waits for a"
        " cancelled call to end, so its figure is about the sleep's length, whatever Dask does;"
        f" {sizes.dask_stream_items:,} streamed ints, anypool's alone (Dask has no generator"
        " tasks).",
        "- Goal: anypool's per-task overhead within 1.2x of Dask's own `client.submit` (the"
        " round trip's median). None for the cancel-then-next-call cycle (Dask's own figure is"
        " the cancelled call's length) nor for the stream (nothing to compare with).",
        "- Dask sends its messages in batches (a client's to the scheduler at most every 10 ms,"
        " the scheduler's and the workers' every 2 to 5 ms): a no-op's round trip waits on them"
        " under either contender. What anypool adds to a call (the call pickled, a pipe to its"
        " child process and back, the wake-up from Dask's callback thread) comes on top of the"
        " same waits.",
    ]


_INTRODUCTIONS = {on_ray.GROUP: _ray_introduction, on_dask.GROUP: _dask_introduction}
"""What each engine section says of how it was measured, by group."""


def _replace_section(text: str, heading: str, section: list[str]) -> str:
    """``text`` with the section under ``heading`` (up to the next heading of its level)
    replaced by ``section``, or with ``section`` added at its end."""
    lines = text.rstrip().splitlines()
    level = heading.split()[0] + " "
    if heading not in lines:
        return "\n".join([*lines, "", *section])
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines))
    return "\n".join([*lines[:start], *section, *lines[end:]])


def _scaling_section(run: Run, plot: Path) -> list[str]:
    if not run.scaling:
        return []
    counts = sorted(run.scaling)
    lines = [
        "## Scaling with the number of workers",
        "",
        f"On this machine ({anypool.cpu_count()} usable CPUs), for 1 to {counts[-1]} workers"
        " (asyncio). A machine with more cores would extend the table; none was at hand for"
        " this run."
        if counts[-1] <= 2
        else f"For 1 to {counts[-1]} workers (asyncio).",
        "",
        "| workers | "
        + " | ".join(f"{name}: map items/s" for name in SCALING_CONTENDERS)
        + " | "
        + " | ".join(f"{name}: CPU efficiency" for name in SCALING_CONTENDERS)
        + " |",
        "|---|" + "---|" * (2 * len(SCALING_CONTENDERS)),
    ]
    for workers in counts:
        cells = [str(workers)]
        for scenario, metric in (("map", "rate"), ("cpu", "efficiency")):
            for name in SCALING_CONTENDERS:
                number = value(run.scaling[workers], name, scenario, "asyncio", metric)
                unit = "" if metric == "efficiency" else "items/s"
                cells.append(_number(number, unit, with_unit=False))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if _plot_scaling(run, plot):
        lines += ["![Scaling](benchmarks/scaling.png)", ""]
    return lines


# --- plots -----------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def _plot_scenario(run: Run, scenario: Scenario, path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    metric = scenario.metrics[0]
    names = [name for name in run.results if scenario.key in run.results[name]]
    backends = ("asyncio", "trio")
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
    height = 0.38
    shown: list[float] = []
    for offset, backend in enumerate(backends):
        numbers = [value(run.results, n, scenario.key, backend, metric.key) for n in names]
        shown += [v for v in numbers if v is not None and v > 0]
        positions = [i + (offset - 0.5) * height for i in range(len(names))]
        axes.barh(
            [p for p, v in zip(positions, numbers, strict=True) if v is not None],
            [v for v in numbers if v is not None],
            height=height,
            label=backend,
        )
    if shown and max(shown) > 30 * min(shown):
        # One slow peer would squash every other bar to nothing.
        axes.set_xscale("log")
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    better = "lower" if metric.better == "lower" else "higher"
    unit = f" ({metric.unit})" if metric.unit else ""
    axes.set_xlabel(f"{metric.label}{unit}, {better} is better")
    axes.set_title(scenario.title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _plot_scaling(run: Run, path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    counts = sorted(run.scaling)
    figure, (rate_axes, efficiency_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for name in SCALING_CONTENDERS:
        rates = [value(run.scaling[n], name, "map", "asyncio", "rate") for n in counts]
        efficiency = [value(run.scaling[n], name, "cpu", "asyncio", "efficiency") for n in counts]
        rate_axes.plot(counts, [r or 0 for r in rates], marker="o", label=name)
        efficiency_axes.plot(counts, [e or 0 for e in efficiency], marker="o", label=name)
    rate_axes.set(xlabel="workers", ylabel="map items/s", title="map of a no-op")
    efficiency_axes.set(xlabel="workers", ylabel="ideal / wall", title="CPU efficiency")
    efficiency_axes.set_ylim(0, 1.05)
    for axes in (rate_axes, efficiency_axes):
        axes.set_xticks(counts)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
