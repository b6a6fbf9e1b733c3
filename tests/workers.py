"""Functions the tests run in worker processes.

They live in an importable module so that workers under every start method can load them by
reference; the tests define lambdas and closures of their own to exercise pickling by value.
Files, not timing, coordinate a worker with its test: a worker writes its pid to a file, or
waits for a file the test creates.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

POLL_INTERVAL = 0.01


# --- coordination ----------------------------------------------------------------------------


def write_pid(path: Path) -> None:
    """Write this worker's pid to ``path`` atomically (a reader never sees a partial file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(os.getpid()))
    os.replace(partial, path)


def wait_for_path(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} did not appear within {timeout} s")
        time.sleep(POLL_INTERVAL)


def write_pid_and_sleep(path: Path, seconds: float) -> int:
    write_pid(path)
    time.sleep(seconds)
    return os.getpid()


def write_pid_and_wait_for(path: Path, release: Path, timeout: float = 30.0) -> int:
    write_pid(path)
    wait_for_path(release, timeout)
    return os.getpid()


def write_pid_wait_for_and_linger(path: Path, release: Path, linger: float) -> str:
    """Wait for ``release``, then keep running ``linger`` seconds more before returning."""
    write_pid(path)
    wait_for_path(release, 30.0)
    time.sleep(linger)
    return "finished"


def meet(own_marker: Path, other_marker: Path, timeout: float = 20.0) -> int:
    """Create ``own_marker`` and wait for ``other_marker``: two calls that meet this way can only
    both return if they run at the same time."""
    own_marker.touch()
    wait_for_path(other_marker, timeout)
    return os.getpid()


def note_sigterm_and_sleep(pid_path: Path, marker: Path, seconds: float) -> None:
    """Treat SIGTERM as a mere note (create ``marker``) and go on sleeping."""
    signal.signal(signal.SIGTERM, lambda signum, frame: marker.touch())
    write_pid(pid_path)
    time.sleep(seconds)


def sleep_then_return(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def touch_and_return(path: Path, value: object) -> object:
    path.touch()
    return value


def return_when_path_exists(path: Path, value: object, timeout: float = 10.0) -> object:
    wait_for_path(path, timeout)
    return value


def raise_value_error_when_path_exists(path: Path, message: str) -> None:
    wait_for_path(path, 20.0)
    raise ValueError(message)


# --- plain results ---------------------------------------------------------------------------


def current_pid() -> int:
    return os.getpid()


def square(x: int) -> int:
    return x * x


def combine(a: int, b: int, *, scale: int = 1, offset: int = 0) -> int:
    return (a + b) * scale + offset


def keyword_arguments(**kwargs: object) -> dict[str, object]:
    return kwargs


def identity(value: object) -> object:
    return value


def zeros(size: int) -> bytes:
    return bytes(size)


def square_unless_negative(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative item {x}")
    return x * x


def apply(call: tuple[Any, ...]) -> object:
    """Run ``call``, a tuple ``(function, *arguments)``: lets one map mix items that behave
    differently (one returns, one raises, one waits for a file)."""
    function, *arguments = call
    return function(*arguments)


async def running_event_loop() -> str:
    """Which event loop library runs this coroutine in the worker."""
    if "trio" in sys.modules:
        import trio

        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            await trio.sleep(0)
            return "trio"
    import asyncio

    asyncio.get_running_loop()
    await asyncio.sleep(0)
    return "asyncio"


# --- initializers ----------------------------------------------------------------------------

initialized_with: object = None
initializations = 0


def initialize(value: object) -> None:
    global initialized_with, initializations
    initialized_with = value
    initializations += 1


def initialization_state() -> tuple[object, int, int]:
    """What the initializer set in this worker, how often it ran, and this worker's pid."""
    return initialized_with, initializations, os.getpid()


def failing_initializer() -> None:
    raise ValueError("the initializer cannot start")


# --- errors ----------------------------------------------------------------------------------


def raise_value_error(message: str) -> None:
    raise ValueError(message)


class CustomError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def raise_custom_error(code: int, detail: str) -> None:
    raise CustomError(code, detail)


class UnpicklableError(Exception):
    """Pickling fails: the exception holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error() -> None:
    raise UnpicklableError("holds a lock")


class UnreducibleError(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("UnreducibleError refuses to be pickled")


def raise_unreducible_error() -> None:
    raise UnreducibleError("refuses pickling")


class UnbuildableError(Exception):
    """Pickles, but cannot be unpickled: __init__ wants two arguments, args holds one."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


def raise_unbuildable_error() -> None:
    raise UnbuildableError("this", "that")


def exit_with(code: int) -> None:
    sys.exit(code)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def exit_immediately(code: int) -> None:
    os._exit(code)


def crash_with_segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def return_lock() -> threading.Lock:
    return threading.Lock()


def _refuse_to_load() -> None:
    raise RuntimeError("this object cannot be rebuilt")


class UnloadableResult:
    """Pickles fine in the worker; unpickling it raises."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_refuse_to_load, ())


def return_unloadable_result() -> UnloadableResult:
    return UnloadableResult()
