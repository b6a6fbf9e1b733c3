"""Making a worker die with its parent, even while it is busy running user code."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading

TYPE_CHECKING = False  # as typing's: workers start without typing (tests/test_architecture.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1

_prctl: Any = None
if sys.platform == "linux":
    # Loaded here, not per worker: under the forkserver method every worker starts with it.
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent(fd: int) -> None:
    """Arrange for this process to end when the parent end of the pipe ``fd`` goes away.

    An idle worker would see end-of-file anyway; this covers a worker busy in user code.
    """
    # The kernel SIGKILLs us when our parent process exits: the pool's process under
    # fork/spawn, the fork server (which exits with the pool's process) under forkserver.
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
        # The parent may have died before prctl took effect; then its pipe end is gone.
        if _hung_up(fd, timeout_ms=0):
            os._exit(1)
        return
    threading.Thread(
        target=_exit_on_hang_up, args=(fd,), name="anypool-lifeline", daemon=True
    ).start()


def _hung_up(fd: int, timeout_ms: int | None) -> bool:
    poller = select.poll()
    # An empty event mask still reports POLLHUP/POLLERR, and never consumes data.
    poller.register(fd, 0)
    return bool(poller.poll(timeout_ms))


def _exit_on_hang_up(fd: int) -> None:
    _hung_up(fd, timeout_ms=None)
    os._exit(1)
