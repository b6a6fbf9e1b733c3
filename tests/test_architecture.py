"""The shape docs/architecture.md describes, checked: no import circle between anypool's modules,
no class too long to read, front ends that reach workers only through the backend protocol,
and a worker side that imports neither anyio nor trio, nor, as it starts, what only some calls
need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "anypool"

FRONT_ENDS = ["_pool.py", "_map.py", "_stream.py", "_channel.py", "_queue.py", "_default_pool.py"]
"""The modules the backend protocol (backends/_base.py) separates from the workers."""

MAX_CLASS_LINES = 360


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_at_load(path: Path) -> set[str]:
    """The anypool modules ``path`` imports when it is loaded: top-level imports, not those
    under ``if TYPE_CHECKING`` or inside functions."""
    tree = ast.parse(path.read_text())
    package = (
        module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    )
    found: set[str] = set()
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            found |= {alias.name for alias in statement.names if alias.name.startswith("anypool")}
        elif isinstance(statement, ast.ImportFrom):
            if statement.level:
                base = package.split(".")
                base = base[: len(base) - statement.level + 1]
                module = ".".join(base + ([statement.module] if statement.module else []))
            else:
                module = statement.module or ""
            if not module.startswith("anypool"):
                continue
            for alias in statement.names:
                # `from . import wire` imports a module; `from .x import name` imports x.
                candidate = f"{module}.{alias.name}"
                found.add(candidate if module_path(candidate) else module)
    return {name for name in found if module_path(name)}


def module_path(name: str) -> Path | None:
    relative = Path(*name.split("."))
    for candidate in (SOURCE.parent / f"{relative}.py", SOURCE.parent / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in SOURCE.rglob("*.py")}


def test_no_module_imports_itself_through_others() -> None:
    graph = {name: imports_at_load(path) - {name} for name, path in all_modules().items()}
    # Packages import nothing here, so a package's modules do not depend on one another
    # through it: leave the edges to packages out.
    circles = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for following in graph.get(node, ()):
                if following == start:
                    circles.append(" -> ".join([*path, start]))
                elif following not in seen:
                    seen.add(following)
                    stack.append((following, [*path, following]))
    assert not circles, "\n".join(sorted(set(circles)))


def lines_of(node: ast.AST) -> int:
    """The lines ``node`` spans, its decorators included."""
    assert node.end_lineno is not None
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return node.end_lineno - first + 1


def is_overload(node: ast.AST) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
        ast.unparse(decorator) in ("overload", "typing.overload")
        for decorator in node.decorator_list
    )


def test_no_class_is_longer_than_a_newcomer_can_read() -> None:
    long = []
    for name, path in all_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                # `@overload` signatures are not counted: they declare types for type checkers
                # (a method that is precise about them has several), and add no code to read.
                lines = lines_of(node) - sum(
                    lines_of(stub) for stub in node.body if is_overload(stub)
                )
                if lines > MAX_CLASS_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


@pytest.mark.parametrize("front_end", FRONT_ENDS)
def test_a_front_end_reaches_workers_only_through_the_backend_protocol(front_end: str) -> None:
    path = SOURCE / front_end
    imported = imports_at_load(path)
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom) and statement.module:
                    imported.add(statement.module.lstrip("."))
    local = sorted(
        name
        for name in imported
        if name.startswith(("anypool.backends.local", "backends.local"))
        # The local backend is the default one; the worker-side channel ends and queue are
        # public names (what a function running in a worker is given).
        and name
        not in (
            "anypool.backends.local.backend",
            "anypool.backends.local.child.duplex",
            "anypool.backends.local.child.queue",
        )
    )
    assert not local, f"{front_end} imports {local}"
    source = path.read_text()
    for forbidden in ("os.kill", "signal.", ".channel.send", "/proc", "WorkerHandle"):
        assert forbidden not in source, f"{front_end} uses {forbidden}"


def test_the_worker_side_imports_neither_anyio_nor_trio() -> None:
    script = (
        "import sys, anypool.backends.local.child.worker, anypool.backends.ray.remote\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('anyio', 'trio', 'sniffio')))"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


WORKER_STARTS_WITHOUT = [
    "cloudpickle",
    "typing",
    "dataclasses",
    "inspect",
    "logging",
    "ast",
    "dis",
    "tokenize",
    "platform",
    "uuid",
    "pickletools",
    "traceback",
    "anyio",
    "multiprocessing",
]
"""Modules that importing the worker module or the fork server must not import: each worker
process (and the fork server, whose start is on the way of a cold start) would pay milliseconds
at every start for what only some calls need (a function pickled by value, an error to report,
a channel), which import them then."""


@pytest.mark.parametrize("module", ["worker", "forkserver"])
def test_the_worker_side_imports_only_what_every_worker_needs(module: str) -> None:
    # Only what the import itself adds: the interpreter may start with some of them loaded (a
    # coverage hook), which is no cost of the worker module's.
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"import anypool.backends.local.child.{module}\n"
        f"print(*[m for m in {WORKER_STARTS_WITHOUT!r} if m in set(sys.modules) - before])"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    imported = output.split()
    assert not imported, f"importing the {module} module imports {imported}"
