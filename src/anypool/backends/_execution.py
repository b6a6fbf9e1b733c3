"""What runs a pickled call, in whichever process a backend runs it: a local worker, a Ray
task. The outcome is ``(kind, payload)``: ``(RESULT, the pickled result)``, ``(ITEM, a pickled
item)`` or ``(ERROR, a pickled ErrorReport)``.

Imported by worker processes: it must stay free of anyio (tests/test_architecture.py).
"""

from __future__ import annotations

import functools
import os
import sys
import time
import types
from collections.abc import Coroutine, Sequence

from .._errors import SerializationError
from .._serialize import ErrorReport, Payload, describe, dumps, dumps_exception, dumps_item, loads

# Workers start without typing, inspect, traceback and pickletools (tests/test_architecture.py):
# the paths that need them (an error to report, a call that cannot be unpickled, a callable
# other than a plain function) import them.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "ERROR",
    "ITEM",
    "RESULT",
    "CallNotLoaded",
    "apply_to_chunk",
    "call_fn",
    "is_async",
    "load_call",
    "pickle_item",
    "pickle_outcome",
    "report_error",
    "run_coroutine",
    "run_pickled_call",
    "start_generator",
    "unpicklable",
    "use_paths",
]

RESULT: Final = 2
ERROR: Final = 3
ITEM: Final = 9
"""The kinds of an outcome (the local backend's wire numbers them with its other messages)."""

_ANYPOOL: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
"""anypool's own source: the frames of a traceback that come before the user's."""

_CO_COROUTINE: Final = 0x80
"""The flag of the code of an ``async def`` function (``inspect.CO_COROUTINE``)."""


class CallNotLoaded(Exception):
    """The message of a call could not be unpickled: its report is ready to send."""

    def __init__(self, report: bytes) -> None:
        self.report = report


def load_call(payload: Payload | bytearray) -> Any:
    """The tuple a CALL, QUEUED, STREAM or OPEN message holds, ``(fn, args, kwargs, ...)``.

    Raises:
        CallNotLoaded: with the report of a SerializationError that names the argument at
            fault, its ``__cause__`` the error raised while unpickling.
    """
    try:
        return loads(payload)
    # BaseException: a __reduce__ may raise anything, and must not end the worker.
    except BaseException as error:
        from ._unpickling import unpickling_error  # imports pickletools

        raise CallNotLoaded(report_error(unpickling_error(payload, error), cause=error)) from None


def run_pickled_call(payload: Payload | bytearray) -> tuple[int, Payload]:
    """Run the pickled call ``(fn, args, kwargs, event_loop)``: ``(RESULT, the pickled result)``
    or ``(ERROR, a pickled ErrorReport)``, whatever went wrong. (Ray tasks run it too.)"""
    try:
        fn, args, kwargs, event_loop = load_call(payload)
        result = call_fn(fn, args, kwargs, event_loop)
    except CallNotLoaded as failure:
        return ERROR, failure.report
    except BaseException as error:
        return ERROR, report_error(error)
    if fn is apply_to_chunk:
        return RESULT, _dump_chunk_outcome(args[0], *result)
    return pickle_outcome(fn, result)


def pickle_outcome(fn: Any, result: Any) -> tuple[int, Payload]:
    """The RESULT message for what ``fn`` returned, or the ERROR that says why it cannot be
    pickled."""
    try:
        return RESULT, dumps(result, out_of_band=True)
    # BaseException: a __reduce__ may raise anything, and must not end the worker.
    except BaseException as error:
        return ERROR, unpicklable(f"the result of {describe(fn)}", result, error)


def _dump_chunk_outcome(
    fn: Any, results: list[Any], failures: list[int], seconds: float
) -> Payload:
    """Pickle what apply_to_chunk returned; a result that cannot be pickled becomes a failure
    of its own item, named after ``fn``, and the others are delivered."""
    try:
        return dumps((results, failures, seconds), out_of_band=True)
    except BaseException:
        pass
    failed = set(failures)
    for position, result in enumerate(results):
        if position in failed:
            continue
        try:
            dumps(result)
        except BaseException as error:
            results[position] = unpicklable(f"the result of {describe(fn)}", result, error)
            failed.add(position)
    return dumps((results, sorted(failed), seconds), out_of_band=True)


def unpicklable(what: str, obj: Any, error: BaseException) -> bytes:
    """The ErrorReport of a SerializationError: ``what`` (``obj``) could not be pickled."""
    failure = SerializationError(f"could not pickle {what} ({describe(obj)}): {error!r}")
    failure.__cause__ = error
    return report_error(failure)


def start_generator(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    generator = fn(*args, **kwargs)
    if not isinstance(generator, (types.GeneratorType, types.AsyncGeneratorType)):
        raise TypeError(
            f"pool.stream needs a generator function; {describe(fn)} returned {describe(generator)}"
        )
    return generator


def pickle_item(item: Any, generator: Any) -> tuple[int, Payload]:
    """The ITEM message for ``item``, or the ERROR that says why it cannot be pickled."""
    try:
        return ITEM, dumps_item(item, f"yielded by {generator.__qualname__}", out_of_band=True)
    except SerializationError as error:
        return ERROR, report_error(error)
    except BaseException as error:  # from a __reduce__: it must not end the worker
        return ERROR, unpicklable(f"an item yielded by {generator.__qualname__}", item, error)


def call_fn(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], event_loop: str) -> Any:
    result = fn(*args, **kwargs)
    if isinstance(result, types.CoroutineType):
        result = run_coroutine(result, event_loop)
    return result


def apply_to_chunk(
    fn: Any, items: Sequence[Any], event_loop: str, stop_at_error: bool
) -> tuple[list[Any], list[int], float]:
    """Call ``fn(item)`` for each item: the results, the positions among them of the items that
    raised (their result is a pickled ErrorReport), and the seconds it took (for sizing the next
    chunk)."""
    started = time.perf_counter()
    results: list[Any] = []
    failures: list[int] = []
    call = functools.partial(_call_async, fn, event_loop) if is_async(fn) else fn
    position = 0
    while position < len(items):
        try:
            # The loop that matters for tiny functions, in C: list.extend keeps the results
            # before an item that raised, so the length says which one it was.
            results.extend(map(call, items[position:] if position else items))
        except BaseException as error:
            failures.append(len(results))
            results.append(report_error(error))
            if stop_at_error:
                break
        position = len(results)
    return results, failures, time.perf_counter() - started


def _call_async(fn: Any, event_loop: str, item: Any) -> Any:
    return call_fn(fn, (item,), {}, event_loop)


def is_async(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine to run (an ``async def``, or an object whose
    ``__call__`` is one)."""
    if type(fn) is types.FunctionType and not fn.__dict__:
        # inspect.iscoroutinefunction's answer for a plain function with nothing set on it (no
        # coroutine marker, no partialmethod): its code's flag. inspect costs a worker some
        # 8 ms to import, for each map of plain functions.
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def run_coroutine(coroutine: Coroutine[Any, Any, Any], event_loop: str) -> Any:
    # Run it on the caller's kind of event loop, imported only when a call needs it.
    if event_loop == "trio":
        import trio

        async def await_coroutine() -> Any:
            return await coroutine

        return trio.run(await_coroutine)
    import asyncio

    return asyncio.run(coroutine)


def report_error(error: BaseException, cause: BaseException | None = None) -> bytes:
    """Pickle ``error`` for the parent, with its traceback as text and a fallback by name;
    and ``cause``, reported likewise, to be its ``__cause__`` there (else the traceback is)."""
    import traceback

    # The first frames are anypool's own; the user's traceback starts below them.
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename.startswith(_ANYPOOL):
        frames = frames.tb_next
    text = "".join(traceback.format_exception(type(error), error, frames))
    exception = dumps_exception(error) if isinstance(error, Exception) else None
    cls = type(error)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    try:
        message = str(error)
    except BaseException:
        message = "<str() of the exception failed>"
    reported_cause = None if cause is None else report_error(cause)
    return dumps(ErrorReport(exception, name, message, text, reported_cause))


def use_paths(sys_path: Sequence[str]) -> None:
    """Add the caller's ``sys.path`` entries that exist here to this process's: where the
    functions pickled by reference are found (a cluster's worker starts with a path of its
    own)."""
    for entry in reversed(sys_path):
        if entry not in sys.path and os.path.isdir(entry or "."):
            sys.path.insert(1, entry)
