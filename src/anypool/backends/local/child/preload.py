"""Imported by the forkserver only (never by the parent): the modules that the application's
main module imports, so that every worker forked from the forkserver starts with them.

The parent names them in an environment variable (the one way to tell the forkserver anything
more). A module that fails to import here is skipped: the forkserver's environment is not the
application's (its ``sys.argv``, for one), and a worker imports the module again itself anyway,
as it would without this.
"""

from __future__ import annotations

import contextlib
import importlib
import os

from ..wire import PRELOAD_VARIABLE

# Popped, so that the workers do not see it.
for _name in os.environ.pop(PRELOAD_VARIABLE, "").split(","):
    # BaseException: a module may well call sys.exit() (argparse) or raise anything else.
    with contextlib.suppress(BaseException):
        if _name:
            importlib.import_module(_name)
