"""What runs a pool's calls: the protocol every backend implements (``_base``) and the
backends: ``local`` (worker processes on this machine), ``ray`` (actors on a Ray cluster) and
``dask`` (tasks on a Dask cluster).

``from anypool.backends import RayBackend`` works, but nothing is imported until a name is asked
for: workers import ``anypool.backends.local.child``, which must not pull anyio in, and
importing anypool never imports Ray or Dask.
"""

from __future__ import annotations

import importlib

__all__ = ["Backend", "DaskBackend", "Feature", "LocalBackend", "RayBackend"]

TYPE_CHECKING = False  # as typing's, which workers do not import (they import this package)
if TYPE_CHECKING:
    from typing import Any

    from ._base import Backend, Feature
    from .dask.backend import DaskBackend
    from .local.backend import LocalBackend
    from .ray.backend import RayBackend

_HOMES = {
    "Backend": "._base",
    "DaskBackend": ".dask.backend",
    "Feature": "._base",
    "LocalBackend": ".local.backend",
    "RayBackend": ".ray.backend",
}


def __getattr__(name: str) -> Any:
    try:
        home = _HOMES[name]
    except KeyError:
        raise AttributeError(f"module 'anypool.backends' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
