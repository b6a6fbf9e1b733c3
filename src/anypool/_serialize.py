"""Turning calls, results and errors into bytes and back.

Functions, lambdas, closures and anything defined in ``__main__`` are pickled by value with
cloudpickle, so they work under every start method; everything is loaded with the standard
unpickler. This module is imported by workers too: it must stay free of anyio and trio.
"""

from __future__ import annotations

import contextlib
import functools
import io
import pickle
import sys
import types
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Sequence

from ._errors import RemoteError, RemoteTraceback, SerializationError, UnsupportedError

# Workers import this module: it imports neither typing nor cloudpickle, which would add
# milliseconds to every worker's start (tests/test_architecture.py); cloudpickle is imported
# where something is to be pickled by value.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Final, NamedTuple, overload
else:
    from ._named_tuple import NamedTuple

__all__ = [
    "MAX_BUFFERS",
    "OUT_OF_BAND_MIN",
    "ErrorReport",
    "OutOfBand",
    "Payload",
    "describe",
    "dumps",
    "dumps_call_arguments",
    "dumps_exception",
    "dumps_item",
    "load_error",
    "load_result",
    "load_value",
    "loads",
]

PROTOCOL = pickle.HIGHEST_PROTOCOL


OUT_OF_BAND_MIN: Final = 512 * 1024
"""Buffers of at least this many bytes go through shared memory: below it, the pipe is faster."""
MAX_BUFFERS: Final = 64
"""The most shared-memory descriptors one frame carries; further buffers go in band."""


class OutOfBand:
    """A pickle whose large buffers travel apart from it.

    On the way out, ``buffers`` are views of the pickled objects' memory; on the way in, the
    shared-memory mappings that hold it, which the unpickled objects then use as their own.
    """

    __slots__ = ("buffers", "data")

    def __init__(self, data: bytes, buffers: list[Any]) -> None:
        self.data = data
        self.buffers = buffers

    def __len__(self) -> int:
        return len(self.data) + sum(memoryview(buffer).nbytes for buffer in self.buffers)


def with_pickle_buffers(payload: Payload) -> Payload:
    """``payload`` as a cluster engine (Ray, Dask) can carry it: its large buffers as
    ``PickleBuffer``, which the engines' own pickling sends out of band (a memoryview it cannot
    pickle at all)."""
    if isinstance(payload, OutOfBand):
        return OutOfBand(payload.data, [pickle.PickleBuffer(buffer) for buffer in payload.buffers])
    return payload


Payload = bytes | OutOfBand


class ErrorReport(NamedTuple):
    """An exception raised in a worker, in a form that always reaches the parent.

    ``exception`` holds the pickled exception when it survived a pickle round trip in the worker,
    else ``None``; the names and the traceback text always arrive, so the parent can fall back to
    a ``RemoteError`` when the exception itself cannot be rebuilt.
    """

    exception: bytes | None
    type_name: str
    message: str
    traceback: str
    cause: bytes | None = None
    """The report of the exception's ``__cause__``, where that is to be rebuilt as well."""


def loads(data: Payload | bytearray) -> Any:
    """Unpickle what :func:`dumps` made (its large buffers straight from shared memory)."""
    if isinstance(data, OutOfBand):
        return pickle.loads(data.data, buffers=data.buffers)
    return pickle.loads(data)


class _NeedsPickleByValue(Exception):
    pass


# Functions and classes known to be found by reference in a worker (module-level, importable).
# Only positive answers are kept: these objects live as long as their modules anyway.
_found_by_reference: dict[object, bool] = {}


class _ByReferencePickler(pickle.Pickler):
    """The C pickler, refusing what only cloudpickle pickles correctly.

    cloudpickle's own pickler runs Python code for every function and class it meets, which
    makes it several times slower on the objects of a typical call. This one leaves everything
    to the C pickler and only checks that each function and class can be found by reference in
    a worker, falling back to cloudpickle when one cannot.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and obj not in _found_by_reference:
            if not _importable(obj):
                raise _NeedsPickleByValue
            _found_by_reference[obj] = True
        return NotImplemented


def _importable(obj: types.FunctionType | type) -> bool:
    module_name = obj.__module__
    # cloudpickle pickles these by value: __main__ differs between parent and worker, and an
    # application may register modules (and their submodules) with register_pickle_by_value.
    if module_name in (None, "__main__", "__mp_main__"):
        return False
    # Nothing is registered in a process that has not imported cloudpickle (a worker, often):
    # it is not imported for that.
    cloudpickle = sys.modules.get("cloudpickle")
    by_value = cloudpickle.list_registry_pickle_by_value() if cloudpickle is not None else ()
    if any(module_name == name or module_name.startswith(name + ".") for name in by_value):
        return False
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__spec__", None) is None:
        return False
    found: object = module
    for part in obj.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is obj


@functools.cache
def _by_value_pickler() -> type[pickle.Pickler]:
    """cloudpickle's pickler, keeping the file names of the code it pickles by value."""
    # Imported on first use: a worker whose results the C pickler takes alone never pays the
    # 15 ms of importing cloudpickle (and what it imports: logging, inspect, dataclasses...).
    import cloudpickle

    reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

    def reduce_code_keeping_its_file(code: types.CodeType) -> Any:
        # cloudpickle names the file of code it pickles by value "<dynamic-code>"; keep the
        # real name, so that a remote traceback points at the file and line the user wrote.
        rebuild, fields = reduce_code(code)
        return rebuild, tuple(
            code.co_filename if field == "<dynamic-code>" else field for field in fields
        )

    class _ByValuePickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
            {types.CodeType: reduce_code_keeping_its_file}, cloudpickle.Pickler.dispatch_table
        )

    return _ByValuePickler


# Values that hold no function or class: the plain C pickler is right for them, and a pickler
# object of our own would cost more than pickling a number does.
PLAIN_TYPES = frozenset({int, float, complex, str, bytes, bool, type(None)})


if TYPE_CHECKING:  # (the overloads are for type checkers only: typing is not imported)

    @overload
    def dumps(obj: object) -> bytes: ...

    @overload
    def dumps(obj: object, *, out_of_band: bool) -> Payload: ...


def dumps(obj: object, *, out_of_band: bool = False) -> Payload:
    """Pickle ``obj``, by value where it cannot be found by reference (cloudpickle).

    With ``out_of_band``, large buffers (numpy arrays, bytearrays) are left out of the pickle,
    for a frame to carry through shared memory: the result is then an :class:`OutOfBand`.
    """
    if out_of_band:
        # A result or an item, or a tuple of them.
        obj = _large_bytes_out_of_band(obj)
    if type(obj) in PLAIN_TYPES:
        return pickle.dumps(obj, PROTOCOL)
    buffers: list[memoryview] = []
    take = functools.partial(_take_large, buffers) if out_of_band else None
    file = io.BytesIO()
    try:
        _ByReferencePickler(file, PROTOCOL, buffer_callback=take).dump(obj)
    except Exception:
        # Something only cloudpickle handles, or that nothing can pickle: let cloudpickle say.
        buffers.clear()
        file = io.BytesIO()
        _by_value_pickler()(file, PROTOCOL, buffer_callback=take).dump(obj)
    if buffers:
        return OutOfBand(file.getvalue(), buffers)
    return file.getvalue()


class _LargeBytes:
    """A large ``bytes`` object that pickles its data out of band (``bytes`` itself never
    does), to be rebuilt as ``bytes`` on the other side."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[type[bytes], tuple[pickle.PickleBuffer]]:
        return bytes, (pickle.PickleBuffer(self.data),)


def dumps_each(items: Sequence[Any]) -> tuple[Payload, int]:
    """Pickle ``items`` one after another into one payload, each a pickle of its own (as
    :func:`dumps` would, large buffers out of band), so that the items before one that cannot
    be unpickled still can be (:func:`loads_each`).

    Stops before the first item that cannot be pickled: returns the payload of those before it
    and how many they are.
    """
    buffers: list[memoryview] = []
    take = functools.partial(_take_large, buffers)
    file = io.BytesIO()
    fast = _ByReferencePickler(file, PROTOCOL, buffer_callback=take)
    for count, item in enumerate(items):
        item = _large_bytes_out_of_band(item)
        start, kept = file.tell(), len(buffers)
        try:
            fast.dump(item)
            # Each pickle stands alone: none refers to what an earlier one memoized.
            fast.clear_memo()
            continue
        except Exception:
            pass
        # Something only cloudpickle handles, or that nothing can pickle (as in dumps). A
        # pickler that failed halfway is not trusted again.
        file.seek(start)
        file.truncate()
        del buffers[kept:]
        fast = _ByReferencePickler(file, PROTOCOL, buffer_callback=take)
        # BaseException: a __reduce__ may raise anything.
        try:
            _by_value_pickler()(file, PROTOCOL, buffer_callback=take).dump(item)
        except BaseException:
            file.seek(start)
            file.truncate()
            del buffers[kept:]
            return _payload(file.getvalue(), buffers), count
    return _payload(file.getvalue(), buffers), len(items)


def loads_each(payload: Payload, what: str) -> Iterator[Any]:
    """The items :func:`dumps_each` pickled, one by one (``what`` they are, for the error).

    Raises:
        SerializationError: at the first item that cannot be unpickled, after those before it
            (as :func:`load_value`).
    """
    if isinstance(payload, OutOfBand):
        data, buffers = payload.data, payload.buffers
    else:
        data, buffers = payload, []
    file = io.BytesIO(data)
    taken = iter(buffers)
    while file.tell() < len(data):
        try:
            # An unpickler each, sharing the buffers: each pickle memoizes from 0.
            item = pickle.Unpickler(file, buffers=taken).load()
        except KeyboardInterrupt:
            raise
        except BaseException as error:
            raise SerializationError(f"could not unpickle {what}: {error!r}") from error
        yield item


def _payload(data: bytes, buffers: list[memoryview]) -> Payload:
    return OutOfBand(data, buffers) if buffers else data


def _large_bytes_out_of_band(obj: Any, depth: int = 1) -> Any:
    """``obj`` with the large ``bytes`` objects it is, or holds in tuples and dict values to
    ``depth`` levels, wrapped to go out of band. Lists are not searched (a map's chunk of small
    items is one), and the common case, no ``bytes`` at all, is told apart by C-level scans."""
    cls = type(obj)
    if cls is bytes:
        return _LargeBytes(obj) if len(obj) >= OUT_OF_BAND_MIN else obj
    if not depth:
        return obj
    if cls is tuple and (bytes in map(type, obj) or (depth > 1 and _nests(obj))):
        return tuple([_large_bytes_out_of_band(item, depth - 1) for item in obj])
    if cls is dict and (bytes in map(type, obj.values()) or (depth > 1 and _nests(obj.values()))):
        return {key: _large_bytes_out_of_band(value, depth - 1) for key, value in obj.items()}
    return obj


def _nests(items: Iterable[Any]) -> bool:
    kinds = set(map(type, items))
    return tuple in kinds or dict in kinds


def _take_large(buffers: list[memoryview], buffer: pickle.PickleBuffer) -> bool:
    """Keep ``buffer`` out of band if it is large; ``True``: pickle it in band."""
    if len(buffers) >= MAX_BUFFERS:
        return True
    try:
        view = buffer.raw()
    except BufferError:  # not contiguous
        return True
    if view.nbytes < OUT_OF_BAND_MIN:
        return True
    buffers.append(view)
    return False


_SCANNED_ARGUMENTS = 64
"""Up to this many arguments, a scan of their types may find that the C pickler alone will do;
for more (a map's large chunk), the scan would cost more than it saves."""


def dumps_call_arguments(
    message: object,
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    large_bytes: bool = True,
) -> Payload:
    """Pickle ``message``, a call of ``fn(*args, **kwargs)``, large buffers out of band, and
    large ``bytes`` arguments too unless ``large_bytes`` is false (the items of a map's chunk,
    which are many and small: searching them would cost more than pickling them).

    Raises:
        SerializationError: naming the function or the argument that could not be pickled.
    """
    if large_bytes or len(args) <= _SCANNED_ARGUMENTS:
        kinds = {*map(type, args), *map(type, kwargs.values())}
        if large_bytes and bytes in kinds:
            # The arguments are two levels down in the message.
            message = _large_bytes_out_of_band(message, depth=2)
        elif kinds <= PLAIN_TYPES and type(fn) is types.FunctionType and fn in _found_by_reference:
            # The common call: a module's function of plain values (what else the message
            # holds is plain too, or anypool's own). The C pickler does as ours would, without
            # a pickler object of our own and its hook for each object: a third of the time.
            return pickle.dumps(message, PROTOCOL)
    try:
        return dumps(message, out_of_band=True)
    except UnsupportedError:
        raise  # an argument the backend cannot carry (see backends._base.pickling_for)
    except Exception as error:
        # Pickle again piece by piece, only on this error path, to name the culprit.
        what, culprit = _find_unpicklable(fn, args, kwargs)
        raise SerializationError(
            f"could not pickle {what} ({describe(culprit)}) for a call to {describe(fn)}: {error}"
        ) from error


if TYPE_CHECKING:

    @overload
    def dumps_item(item: object, purpose: str) -> bytes: ...

    @overload
    def dumps_item(item: object, purpose: str, *, out_of_band: bool) -> Payload: ...


def dumps_item(item: object, purpose: str, *, out_of_band: bool = False) -> Payload:
    """Pickle ``item``, one of many values on their way (``purpose`` says where, for errors).

    Raises:
        SerializationError: naming the item's type.
    """
    try:
        return dumps(item, out_of_band=out_of_band)
    except Exception as error:
        raise SerializationError(f"could not pickle {describe(item)} {purpose}: {error}") from error


def _find_unpicklable(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
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


def dumps_exception(error: BaseException) -> bytes | None:
    """Pickle an exception to be rebuilt as itself, or ``None`` if it cannot be.

    An exception pickles as its type called with its ``args``, which fails to unpickle where
    ``__init__`` takes other arguments than the message it passes on (``QuotaError(message,
    user, used)``): such an exception, unless it has a ``__reduce__`` of its own, is pickled as
    its type, ``args`` and attributes instead, to be rebuilt without calling ``__init__``.
    """
    forms: list[object] = [error]
    # Only where pickling is the default one: an exception's own __reduce__ has the last word.
    if type(error).__reduce__ is BaseException.__reduce__:
        forms.append(_RebuiltException(error))
    for form in forms:
        try:
            data = dumps(form)
            loads(data)  # unpickling can fail where pickling worked
            return data
        # BaseException: a __reduce__ may raise SystemExit; that must not end the worker.
        except BaseException:
            continue
    return None


class _RebuiltException:
    """Pickles an exception as its type, ``args`` and ``__dict__`` (``__notes__`` included)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> tuple[object, ...]:
        error = self.error
        return _rebuild_exception, (type(error), error.args, vars(error))


def _rebuild_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__setstate__(state)
    return error


def load_value(payload: Payload | bytearray, what: str) -> Any:
    """Unpickle ``what`` (for the error message: ``"the result of fn"``).

    Raises:
        SerializationError: anything raised while unpickling (a class that cannot be imported
            here, a ``__reduce__`` that raises, even ``SystemExit``), as its ``__cause__``;
            except ``KeyboardInterrupt``, which is the user's Ctrl-C.
    """
    try:
        return loads(payload)
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        raise SerializationError(f"could not unpickle {what}: {error!r}") from error


def load_result(payload: Payload | bytearray, fn: Callable[..., Any]) -> Any:
    """Unpickle the result of a call to ``fn``.

    Raises:
        SerializationError: the result cannot be rebuilt here (see :func:`load_value`).
    """
    return load_value(payload, f"the result of {describe(fn)}")


def load_error(payload: bytes | bytearray) -> BaseException:
    """Rebuild the exception a worker reported, its remote traceback attached as ``__cause__``
    (or the exception reported as its cause, with its own remote traceback).

    It is the original exception where it can be rebuilt and is an ``Exception``; otherwise a
    :class:`RemoteError` that carries its type name, message and traceback text.
    """
    report: ErrorReport = loads(payload)
    error: BaseException | None = None
    if report.exception is not None:
        # A __reduce__ may raise SystemExit here too: the exception then arrives as RemoteError.
        with contextlib.suppress(SerializationError):
            error = load_value(report.exception, "an exception")
    if not isinstance(error, Exception):
        error = RemoteError(report.type_name, report.message, report.traceback)
    if report.cause is not None:
        error.__cause__ = load_error(report.cause)
    else:
        error.__cause__ = RemoteTraceback(report.traceback)
    return error
