"""Checks of the arguments the public API takes: each error names the parameter, what it
expects, and what it was given, before anything is started or sent."""

from __future__ import annotations

import math
import operator
from collections.abc import AsyncIterable, Iterable
from typing import Any, Final

__all__ = [
    "check_callable",
    "check_count",
    "check_flag",
    "check_iterable",
    "check_seconds",
    "check_timeout",
]

# Seconds (some 31 years) beyond which a timeout is as good as none: a worker's idle timeout
# becomes a kernel socket timeout, whose integer seconds cannot hold every float (inf least).
_NEVER: Final = 1e9


def _given(value: object) -> str:
    """``value`` as an error message shows it: its repr, and its type where that says more."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return text
    return f"{text} (a {type(value).__qualname__})"


def check_count(
    name: str,
    value: object,
    *,
    minimum: int = 1,
    optional: bool = False,
    expected: str | None = None,
) -> Any:
    """``value`` as an ``int`` of at least ``minimum`` (``None`` too, if ``optional``);
    ``expected`` says what else the parameter takes, for the error message.

    Raises:
        TypeError: not an integer (a ``bool`` is not one here).
        ValueError: less than ``minimum``.
    """
    if value is None and optional:
        return None
    expected = expected or "an int" + (" or None" if optional else "")
    # A bool is an int to Python, but max_workers=True is a mistake.
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be {expected}, not {_given(value)}")
    number = operator.index(value)
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {number}")
    return number


def _seconds(name: str, value: object, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {expected}, not {_given(value)}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be {expected}, not {value}")
    return seconds


def check_seconds(name: str, value: object) -> float:
    """``value`` as a finite number of seconds, zero or more.

    Raises:
        TypeError: not a number.
        ValueError: negative, NaN or infinite.
    """
    expected = "a finite number of seconds, 0 or more"
    seconds = _seconds(name, value, expected)
    if math.isinf(seconds):
        raise ValueError(f"{name} must be {expected}, not {value}")
    return seconds


def check_timeout(name: str, value: object) -> float | None:
    """``value`` as a positive number of seconds, or ``None`` for a wait that never ends:
    ``None``, ``math.inf`` and numbers too large for any clock to reach mean that.

    Raises:
        TypeError: neither a number nor ``None``.
        ValueError: zero, negative or NaN.
    """
    if value is None:
        return None
    expected = "a positive number of seconds, or None (or math.inf) for never"
    seconds = _seconds(name, value, expected)
    if seconds == 0:
        raise ValueError(f"{name} must be {expected}, not {value}")
    return None if seconds >= _NEVER else seconds


def check_flag(name: str, value: object) -> bool:
    """``value``, which must be a ``bool``.

    Raises:
        TypeError: anything else (``0``, ``"yes"``, ``None``): it would be read as a truth
            value, probably not the one meant.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {_given(value)}")
    return value


def check_callable(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, not {_given(value)}")


def check_iterable(name: str, value: object) -> None:
    """Raises TypeError unless ``value`` is an iterable or an async iterable."""
    if not isinstance(value, (Iterable, AsyncIterable)) and not hasattr(value, "__getitem__"):
        raise TypeError(f"{name} must be an iterable or an async iterable, not {_given(value)}")
