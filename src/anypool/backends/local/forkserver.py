"""Workers started from multiprocessing's forkserver start with what each would import at its
start loaded already: the worker module, what the application's main module imports, and
cloudpickle where calls need it."""

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

__all__ = ["preload_in_forkserver"]

_WORKER_MODULE: Final = "anypool.backends.local.child.worker"
_PRELOAD_MODULE: Final = "anypool.backends.local.child.preload"


def preload_in_forkserver() -> None:
    """Have multiprocessing's forkserver import once what each worker forked from it would
    otherwise import at its start: the worker module; what the application's main module
    imports (see :func:`_main_module_imports`); and cloudpickle, if this process has pickled
    something by value already. Only effective before the forkserver starts: called when a
    pool is made, and again before each worker start (the first one starts the forkserver),
    when the call that wants the worker is pickled already.

    The worker module alone leaves cloudpickle out, as the 15 ms it takes to import would
    be on the way of every cold start (the forkserver's start is): a pool whose functions are
    found by reference never needs it. A call pickled by value (a function of the main module,
    a lambda) does, in every worker, from the first call on: importing it here costs the first
    call nothing more, and each later worker start 15 ms less.
    """
    forkserver = multiprocessing.forkserver._forkserver
    # Keep what the application asked the forkserver to preload (default: ["__main__"]).
    preload = list(getattr(forkserver, "_preload_modules", ["__main__"]))
    wanted = [_WORKER_MODULE]
    if "cloudpickle" in sys.modules:
        wanted.append("cloudpickle")
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
    """The modules the main module (a script, or a module run with ``-m``) imports at its top
    level; for a script, with what running it again takes.

    Each worker imports the main module again, for the functions it defines, and with it what
    it imports: every worker start would pay for the application's imports, some 100 ms for a
    real one. multiprocessing means to preload a main script in the forkserver, but never does
    (up to 3.13 at least, ``ensure_running`` passes the script's path under a key that
    ``main`` does not read), and a module run with ``-m`` not at all. Preloading the main module
    itself would make each worker's import of it warn (runpy finds it imported already), so
    what it imports is preloaded instead: the modules already imported here.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    # (Workers do not import a package's __main__ again: nothing to preload for it.)
    if (spec is not None and spec.name.rpartition(".")[2] == "__main__") or not isinstance(
        path, str
    ):
        return ()
    # A script's relative imports cannot resolve: they are skipped below.
    package = spec.parent if spec is not None else None
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
                    "." * statement.level + (statement.module or ""), package
                )
            except (ImportError, ValueError):
                continue
            names.append(module)
            # `from package import module` imports the module too.
            names += [f"{module}.{alias.name}" for alias in statement.names]
    imported = [name for name in dict.fromkeys(names) if name in sys.modules]
    if spec is None:
        # Each worker runs a script again with runpy.run_path, which imports pkgutil (and with
        # it typing) on the way.
        imported.append("pkgutil")
    return tuple(imported)
