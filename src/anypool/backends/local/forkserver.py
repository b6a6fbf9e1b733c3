"""Workers started from multiprocessing's forkserver start with the worker module loaded, and
with what the application's main module imports."""

from __future__ import annotations

import ast
import functools
import importlib.util
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from typing import Final

from . import wire

__all__ = ["preload_worker_module_in_forkserver"]

_WORKER_MODULE: Final = "anypool.backends.local.child.worker"
_PRELOAD_MODULE: Final = "anypool.backends.local.child.preload"


def preload_worker_module_in_forkserver() -> None:
    """Have multiprocessing's forkserver import the worker module once, so that each worker
    forked from it starts with it loaded; and, for an application run as ``python -m``, what
    its main module imports. Only effective before the forkserver starts."""
    forkserver = multiprocessing.forkserver._forkserver
    # Keep what the application asked the forkserver to preload (default: ["__main__"]).
    preload = list(getattr(forkserver, "_preload_modules", ["__main__"]))
    wanted = [_WORKER_MODULE]
    names = _main_module_imports() if "__main__" in preload else ()
    if names:
        # Through a module of ours that skips what fails to import: the forkserver lets only
        # an ImportError pass, and any other error of a module preloaded by name would end it,
        # and with it every worker start.
        os.environ.setdefault(wire.PRELOAD_VARIABLE, ",".join(names))
        wanted.append(_PRELOAD_MODULE)
    missing = [name for name in wanted if name not in preload]
    if missing:
        forkserver.set_forkserver_preload([*preload, *missing])


@functools.cache
def _main_module_imports() -> tuple[str, ...]:
    """The modules the main module imports at its top level, if it was run with ``-m``.

    multiprocessing preloads a main *script* in the forkserver, by its path, but a main module
    run with ``-m`` not at all, while each worker imports it again (for the functions it
    defines): every worker start would pay for the application's imports, some 100 ms for a
    real one. Preloading the main module itself would make each worker's import of it warn
    (runpy finds it imported already), so what it imports is preloaded instead: the modules
    already imported here.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    # (Workers do not import a package's __main__ again: nothing to preload for it.)
    if spec is None or spec.name.rpartition(".")[2] == "__main__" or not isinstance(path, str):
        return ()
    try:
        with open(path, "rb") as source:
            statements = ast.parse(source.read()).body
    except (OSError, SyntaxError, ValueError):
        return ()
    names: list[str] = []
    for statement in statements:
        if isinstance(statement, ast.Import):
            names += [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom):
            try:
                module = importlib.util.resolve_name(
                    "." * statement.level + (statement.module or ""), spec.parent
                )
            except (ImportError, ValueError):
                continue
            names.append(module)
            # `from package import module` imports the module too.
            names += [f"{module}.{alias.name}" for alias in statement.names]
    return tuple(name for name in dict.fromkeys(names) if name in sys.modules)
