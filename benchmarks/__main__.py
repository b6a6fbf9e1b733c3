"""anypool against its peers, every scenario, in one run on this machine.

    python -m benchmarks [--quick] [--workers N] [--output DIR] [--only SCENARIO ...]

Each contender runs in a fresh interpreter of its own, with the same number of workers; each
scenario runs on asyncio and on trio where the contender supports it, several times, and the
report gives medians and anypool's ratio to the best peer. The floor of this machine (a raw
pipe round trip, a memory copy) is measured in the same run. The full run writes
``docs/benchmarks.md`` and its plots; ``--quick`` runs everything small, to check that it works,
and writes to ``--output`` (default: a temporary directory).

The engine sections (``benchmarks/engines.py``): the Ray section (``benchmarks/on_ray.py``:
anypool on Ray against Ray's own API) and the Dask section (``benchmarks/on_dask.py``: anypool on
Dask against Dask's own API) are part of the full run where their engine is installed;
``--quick`` leaves them out (a Ray takes seconds to start and a gigabyte of memory, a Dask
LocalCluster seconds) unless ``--only`` names them. ``--only ray`` (``--only dask``) runs that
section alone; into a page that exists already, it writes that page's section only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anypool
from benchmarks import contenders, engines, floor, report, scenarios

ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: object, timeout: float) -> tuple[str, str | None]:
    """Run ``python -m module args`` in a fresh interpreter: its output, and the last line of
    its error output if it failed."""
    process = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if process.returncode != 0:
        lines = process.stderr.strip().splitlines() or [f"exit code {process.returncode}"]
        return process.stdout, lines[-1]
    if process.stderr.strip():
        print(process.stderr.rstrip(), file=sys.stderr)
    return process.stdout, None


def run_contender(
    name: str, workers: int, size: str, repeat: int, keys: list[str]
) -> dict[str, Any]:
    """One contender's results, measured in a fresh interpreter."""
    output, error = run_module(
        "benchmarks.runner", name, workers, size, repeat, *keys, timeout=1800
    )
    if error is not None:
        print(f"  {name} failed: {error}", file=sys.stderr)
        return {key: {"error": error} for key in keys}
    results: dict[str, Any] = json.loads(output)
    return results


def cold_first_call(name: str, backend: str, workers: int, repeat: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeat):
        output, error = run_module("benchmarks.cold", name, backend, workers, timeout=300)
        if error is not None:
            return {"error": error}
        samples.append(float(output.split()[-1]))
    return {"seconds": statistics.median(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="everything small: under a minute")
    parser.add_argument("--workers", type=int, default=anypool.cpu_count())
    parser.add_argument("--repeat", type=int, help="runs per measurement (default: 5, quick: 1)")
    parser.add_argument("--output", type=Path, help="where the report and plots go")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="SCENARIO",
        choices=[
            *(s.key for s in scenarios.SCENARIOS),
            *(s.key for s in engines.SCENARIOS),
            *(section.group for section in engines.SECTIONS),
        ],
        help="these scenarios only ("
        + ", ".join(f"{s.group!r}: the {s.engine} section's" for s in engines.SECTIONS)
        + ")",
    )
    parser.add_argument("--contenders", nargs="+", metavar="NAME", help="these contenders only")
    parser.add_argument(
        "--scaling",
        type=int,
        nargs="*",
        metavar="WORKERS",
        help="worker counts for the scaling table (default: 1, 2, 4, ... up to the CPUs)",
    )
    options = parser.parse_args()
    size = "quick" if options.quick else "full"
    sizes = scenarios.sizes(size, options.repeat)
    output: Path = options.output or (
        Path(tempfile.mkdtemp(prefix="anypool-bench-")) if options.quick else ROOT / "docs"
    )
    only = set(options.only or ())
    for section in engines.SECTIONS:
        if section.group in only:
            only.update(section.keys)
    keys = [s.key for s in scenarios.SCENARIOS if not only or s.key in only]
    # The engine sections: in the full run, or where named.
    engine_keys = {
        section.group: [key for key in section.keys if key in only or not (only or options.quick)]
        for section in engines.SECTIONS
    }
    chosen = [
        contender
        for contender in contenders.CONTENDERS
        if keys and (not options.contenders or contender.name in options.contenders)
    ]
    started = time.monotonic()

    def progress(message: str) -> None:
        # With the time since the start: where a slow or stuck run spent it.
        print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr)

    results: dict[str, dict[str, Any]] = {}
    for contender in chosen:
        if not contender.installed():
            print(f"{contender.name}: not installed (pip install anypool[bench])", file=sys.stderr)
            continue
        progress(f"measuring {contender.name} ...")
        measured = [k for k in keys if k != "cold" and scenarios.by_key(k).applies(contender)]
        results[contender.name] = (
            run_contender(contender.name, options.workers, size, sizes.repeat, measured)
            if measured
            else {}
        )
        if "cold" in keys and scenarios.by_key("cold").applies(contender):
            results[contender.name]["cold"] = {
                backend: cold_first_call(
                    contender.name, backend, options.workers, sizes.cold_repeat
                )
                for backend in contender.backends
            }

    engine_results: dict[str, dict[str, dict[str, Any]]] = {}
    for section in engines.SECTIONS:
        section_keys = engine_keys[section.group]
        if section_keys and not section.installed():
            print(
                f"the {section.engine} section: {section.engine} is not installed"
                f" (pip install anypool[{section.extra}])",
                file=sys.stderr,
            )
            continue
        section_results: dict[str, dict[str, Any]] = {}
        for contender in section.contenders if section_keys else ():
            if options.contenders and contender.name not in options.contenders:
                continue
            measured = [key for key in section_keys if engines.by_key(key).applies(contender)]
            if not measured:
                continue
            progress(f"measuring {contender.name} ...")
            section_results[contender.name] = run_contender(
                contender.name, options.workers, size, sizes.repeat, measured
            )
        if section_results:
            engine_results[section.group] = section_results

    scaling: dict[int, dict[str, Any]] = {}
    counts = options.scaling
    if counts is None:
        counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= anypool.cpu_count()]
    if not only or {"map", "cpu"} & only:
        names = [
            name
            for name in report.SCALING_CONTENDERS
            if contenders.by_name(name).installed()
            and (not options.contenders or name in options.contenders)
        ]
        for workers in counts:
            if workers == options.workers:
                scaling[workers] = {name: results.get(name, {}) for name in names}
                continue
            progress(f"scaling: {workers} workers ...")
            scaling[workers] = {
                name: run_contender(name, workers, size, sizes.repeat, ["map", "cpu"])
                for name in names
            }

    machine_floor = floor.measure(sizes.big_bytes)
    run = report.Run(
        quick=options.quick,
        workers=options.workers,
        sizes=sizes,
        results=results,
        scaling=scaling,
        floor=machine_floor,
        seconds=time.monotonic() - started,
        engines=engine_results,
    )
    print(report.summary(run))
    path = report.write(run, output)
    progress(f"report: {path}")


if __name__ == "__main__":
    main()
