"""Turning calls, results and errors into bytes and back.

Functions, lambdas, closures and anything defined in ``__main__`` are pickled by value with
cloudpickle, so they work under every start method; everything is loaded with the standard
unpickler. This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle

from ._errors import RemoteError, RemoteTraceback, SerializationError
from ._protocol import ErrorReport

__all__ = ["describe", "dumps", "dumps_call_arguments", "load_error", "load_result", "loads"]

PROTOCOL = pickle.HIGHEST_PROTOCOL

loads = pickle.loads


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` by value where it cannot be found by reference (cloudpickle)."""
    return cloudpickle.dumps(obj, protocol=PROTOCOL)


def dumps_call_arguments(
    message: object, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """Pickle ``message``, a call of ``fn(*args, **kwargs)``.

    Raises:
        SerializationError: naming the function or the argument that could not be pickled.
    """
    try:
        return dumps(message)
    except Exception as error:
        # Pickle again piece by piece, only on this error path, to name the culprit.
        what, culprit = _find_unpicklable(fn, args, kwargs)
        raise SerializationError(
            f"could not pickle {what} ({describe(culprit)}) for a call to {describe(fn)}: "
            f"{error}"
        ) from error


def _find_unpicklable(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, object]:
    candidates: list[tuple[str, object]] = [("the function", fn)]
    candidates += [(f"argument {index}", arg) for index, arg in enumerate(args)]
    candidates += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for what, obj in candidates:
        try:
            dumps(obj)
        except Exception:
            return what, obj
    return "the call", (fn, args, kwargs)


def describe(obj: object) -> str:
    """A short name for ``obj`` in an error message: a function's name, else its type's."""
    name = getattr(obj, "__qualname__", None)
    if callable(obj) and isinstance(name, str):
        return name
    cls = type(obj)
    return f"a {cls.__module__}.{cls.__qualname__} object"


def load_result(payload: bytes | bytearray, fn: Callable[..., Any]) -> Any:
    """Unpickle the result of a call to ``fn``.

    Raises:
        SerializationError: the result cannot be rebuilt here (say, its class is not importable).
    """
    try:
        return loads(payload)
    except Exception as error:
        raise SerializationError(f"could not unpickle the result of {describe(fn)}: {error}") from error


def load_error(payload: bytes | bytearray) -> BaseException:
    """Rebuild the exception a worker reported, its remote traceback attached as ``__cause__``.

    It is the original exception where it can be rebuilt and is an ``Exception``; otherwise a
    :class:`RemoteError` that carries its type name, message and traceback text.
    """
    report: ErrorReport = loads(payload)
    error: BaseException | None = None
    if report.exception is not None:
        try:
            error = loads(report.exception)
        except Exception:
            error = None
    if not isinstance(error, Exception):
        error = RemoteError(report.type_name, report.message, report.traceback)
    error.__cause__ = RemoteTraceback(report.traceback)
    return error
