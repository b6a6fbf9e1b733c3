"""What runs inside a Ray task: the same worker-side code as a local worker's, on a pickled call.

Imported by Ray workers (by reference, as this module's functions are): it must stay free of
anyio, and import Ray nowhere.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Sequence
from typing import Any

from ..._serialize import OutOfBand, Payload
from ..local.child.worker import run_pickled_call

__all__ = ["for_ray", "run_call"]


def for_ray(payload: Payload) -> Any:
    """``payload`` as Ray can carry it: large buffers as ``PickleBuffer``, which Ray's own
    serializer sends out of band (a memoryview it cannot pickle at all)."""
    if isinstance(payload, OutOfBand):
        return OutOfBand(payload.data, [pickle.PickleBuffer(buffer) for buffer in payload.buffers])
    return payload


def run_call(payload: Payload, sys_path: Sequence[str]) -> tuple[int, Any]:
    """Run the pickled call ``(fn, args, kwargs, event_loop)`` and return its outcome as a
    local worker sends it: ``(RESULT, pickled result)`` or ``(ERROR, pickled ErrorReport)``.

    ``sys_path`` is the caller's: where functions pickled by reference are found (a Ray worker
    starts with its own path). Entries that do not exist on this machine are left out.
    """
    for entry in reversed(sys_path):
        if entry not in sys.path and os.path.isdir(entry or "."):
            sys.path.insert(1, entry)
    kind, body = run_pickled_call(payload)
    return kind, for_ray(body)
