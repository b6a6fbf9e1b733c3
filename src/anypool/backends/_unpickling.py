"""Saying which part of a call could not be unpickled in a worker.

A call travels as one pickle, ``(fn, args, kwargs, ...)``: fast, but when it fails to unpickle
(a class the worker cannot import, a ``__reduce__`` or ``__setstate__`` that raises) the error
alone does not say which argument was at fault. On that path only, the pickle is read twice
more: once by Python's own unpickler, counting the opcodes it runs until the failure, and once
by :mod:`pickletools`, which tells which argument each opcode builds.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from collections.abc import Callable, Iterable
from typing import Any, cast

from .._errors import SerializationError
from .._serialize import OutOfBand, Payload, describe

__all__ = ["unpickling_error"]


def unpickling_error(payload: Payload | bytearray, error: BaseException) -> SerializationError:
    """The error for a call whose message could not be unpickled here, raising ``error``: it
    names the function (when it was rebuilt) and the argument at fault."""
    try:
        what, fn = _locate(payload)
    except Exception:  # an unforeseen pickle: say less, never fail here
        what, fn = None, None
    of_call = f" of a call to {describe(fn)}" if fn is not None else ""
    return SerializationError(
        f"could not unpickle {what or 'the call'}{of_call} in worker process {os.getpid()}: "
        f"{error!r}"
    )


def _locate(payload: Payload | bytearray) -> tuple[str | None, Any]:
    """What part of the message failed to unpickle (``"argument 1"``...), and the function
    if it was rebuilt before the failure."""
    data, buffers = (
        (payload.data, payload.buffers) if isinstance(payload, OutOfBand) else (payload, None)
    )
    failed_at, stacks = _replay(data, buffers)
    if failed_at is None:
        return None, None
    message = _structure(data)
    path = message.path_to(failed_at)
    # The items of a tuple under construction sit on the unpickler's stack above its MARK:
    # the message's own at the first level, its arguments' (if they have a MARK) at the next.
    built = stacks[1] if len(stacks) > 1 else []
    fn = built[0] if path and path[0] > 0 and built else None
    if len(path) < 2:
        return ("the function" if path == [0] else None), fn
    from ._execution import apply_to_chunk

    if fn is apply_to_chunk:
        # A map's chunk, a call of apply_to_chunk(fn, items, ...): say which item failed.
        inner = stacks[2] if len(stacks) > 2 else []
        path = path[1:]
        fn = inner[0] if path[0] > 0 and inner else None
        if path[0] == 0:
            return "the function", None
        if path[0] == 1 and len(path) > 1:
            return f"item {path[1]} of its chunk", fn
        return None, fn
    if path[0] == 1:
        return f"argument {path[1]}", fn
    if path[0] == 2:
        return f"keyword argument {path[1]!r}", fn
    return None, fn


class _Counting(pickle._Unpickler):
    """Python's unpickler, counting the opcodes it runs."""

    def __init__(self, file: io.BytesIO, buffers: Iterable[Any] | None) -> None:
        super().__init__(file, buffers=buffers)
        self.ran = 0
        self.dispatch = {  # type: ignore[misc]  # load() reads it from the instance
            code: self._counted(load) for code, load in self.dispatch.items()
        }
        # Python's unpickler keeps its stacks in these, which typeshed does not know of.
        self.metastack: list[list[Any]] = []
        self.stack: list[Any] = []

    def _counted(self, load: Callable[[Any], None]) -> Callable[[Any], None]:
        def counted(unpickler: Any) -> None:
            self.ran += 1
            load(unpickler)

        return counted


def _replay(
    data: bytes | bytearray | memoryview, buffers: Any
) -> tuple[int | None, list[list[Any]]]:
    """Unpickle ``data`` again: the index of the opcode that fails (``None`` if none does), and
    the unpickler's stacks at that moment, the outermost first."""
    unpickler = _Counting(io.BytesIO(data), buffers)
    try:
        unpickler.load()
    except BaseException:  # what the C unpickler raised: a __reduce__ may raise anything
        return unpickler.ran - 1, [*unpickler.metastack, unpickler.stack]
    return None, []


class _Node:
    """An object a pickle builds: the opcodes that build it (``first`` to ``last``), and what
    it holds, for tuples, lists (by position) and dicts (by key)."""

    __slots__ = ("children", "first", "key", "last", "value")

    def __init__(self, first: int, last: int) -> None:
        self.first = first
        self.last = last
        self.children: list[_Node] = []
        self.key: list[object] = []  # for a dict, each child's key
        self.value: object = None  # a string pushed by the opcode itself

    def path_to(self, index: int) -> list[Any]:
        """The positions (or keys) down to the innermost container child that holds the
        object built by opcode ``index``."""
        for position, child in enumerate(self.children):
            if child.first <= index <= child.last:
                step = self.key[position] if self.key else position
                return [step, *child.path_to(index)]
        return []


_MARK = object()
_CONTAINERS = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "LIST", "DICT"}
_ADDERS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS"}
_KEYED = {"SETITEM", "SETITEMS", "DICT"}  # their items alternate key, value


def _structure(data: bytes | bytearray | memoryview) -> _Node:
    """Run the pickle's opcodes on a stack of :class:`_Node` instead of objects."""
    stack: list[Any] = []
    memo: dict[int, _Node] = {}
    for index, (opcode, argument, _) in enumerate(pickletools.genops(bytes(data))):
        name = opcode.name
        if name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
            continue
        if name.endswith("PUT"):
            memo[cast(int, argument)] = stack[-1]
            continue
        before = opcode.stack_before
        if pickletools.markobject in before:
            mark = len(stack) - 1 - stack[::-1].index(_MARK)
            items = stack[mark + 1 :]
            del stack[mark:]
            below = before.index(pickletools.markobject)
        else:
            items, below = [], len(before)
        taken = stack[len(stack) - below :]
        del stack[len(stack) - below :]
        taken += items
        if name.endswith("GET"):
            node = _Node(index, index)
            node.value = memo[cast(int, argument)].value
            stack.append(node)
        elif name == "STOP":
            return taken[0]  # type: ignore[no-any-return]
        elif opcode.stack_after == [pickletools.markobject]:
            stack.append(_MARK)
        elif opcode.stack_after:
            if name in _ADDERS:
                node, added = taken[0], taken[1:]
            else:
                node = _Node(min([index, *(item.first for item in taken)]), index)
                added = taken if name in _CONTAINERS else []
                if isinstance(argument, str):
                    node.value = argument
            node.last = index
            if name in _KEYED:
                node.key += [key.value for key in added[::2]]
                node.children += added[1::2]
            else:
                node.children += added
            stack.append(node)
    raise ValueError("a pickle without STOP")
