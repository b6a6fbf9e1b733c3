"""The functions every contender runs in its workers. They live in a module of their own so that
every peer finds them by reference, whatever its start method."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def noop(x: T = None) -> T:  # type: ignore[assignment]
    return x


async def async_noop(x: T = None) -> T:  # type: ignore[assignment]
    # aiomultiprocess runs coroutine functions only.
    return x


def echo(x: T) -> T:
    return x


async def async_echo(x: T) -> T:
    return x


def spin(iterations: int) -> float:
    """CPU work: a pure-Python loop, the same amount whatever else the machine does. Returns the
    seconds it took, in the worker."""
    started = time.perf_counter()
    total = 0
    for i in range(iterations):
        total += i
    return time.perf_counter() - started


async def async_spin(iterations: int) -> float:
    return spin(iterations)


def busy(seconds: float) -> None:
    """Keep a core busy for ``seconds`` of wall time: a call that only a kill ends sooner."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


async def async_busy(seconds: float) -> None:
    busy(seconds)


def getpid_after(seconds: float) -> int:
    """This worker's pid, after holding it for ``seconds`` (so that concurrent calls spread
    over every worker)."""
    time.sleep(seconds)
    return os.getpid()


async def async_getpid_after(seconds: float) -> int:
    return getpid_after(seconds)


def count_up() -> Iterator[int]:
    number = 0
    while True:
        yield number
        number += 1


def count_to(items: int) -> Iterator[int]:
    """A finite stream: ``0 .. items - 1``, ended by the generator itself."""
    # Not ``yield from range(items)``: Ray's streaming generator calls send(), which a range
    # iterator lacks.
    for number in range(items):  # noqa: UP028
        yield number


def mark_then_sleep(path: str, seconds: float) -> None:
    """Create ``path`` (the call runs now), then sleep: a long call that a kill ends sooner."""
    Path(path).touch()
    time.sleep(seconds)


def calibrate_spin(seconds: float) -> int:
    """The ``spin`` iterations that take ``seconds`` on one core of this machine."""
    iterations = 100_000
    best = min(spin(iterations) for _ in range(5))
    return max(1, round(iterations * seconds / best))
