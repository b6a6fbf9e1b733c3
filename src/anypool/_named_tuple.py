"""``typing.NamedTuple`` for the records a worker imports, without importing :mod:`typing`,
which would add milliseconds to every worker's start (and to the forkserver's).

A module that defines such a record imports ``NamedTuple`` as type checkers know it::

    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from ._named_tuple import NamedTuple

and gets the same class as ``typing.NamedTuple`` would make of its definition: a
``collections.namedtuple`` with its fields, defaults, docstring and methods. Only what type
checkers read differs: its ``__annotations__`` keep the annotations' text (the module
postpones them, ``from __future__ import annotations``), which ``typing`` would turn into
forward references, and it has no ``__orig_bases__``.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["NamedTuple"]

# What a class statement puts in the namespace that is no attribute of the record (as typing's).
_NOT_COPIED = frozenset({"__module__", "__name__", "__annotations__"})


class _NamedTupleMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        if not bases:  # NamedTuple itself
            return super().__new__(mcs, name, bases, namespace)
        annotations = namespace.get("__annotations__", {})
        fields = list(annotations)
        defaults = [namespace[field] for field in fields if field in namespace]
        module = namespace["__module__"]
        # (Type checkers know namedtuple's fields only when written out: these are not.)
        record: Any = collections.namedtuple(name, fields, defaults=defaults, module=module)  # type: ignore[misc]
        record.__annotations__ = record.__new__.__annotations__ = annotations
        for key, value in namespace.items():
            if key not in _NOT_COPIED and key not in annotations:
                setattr(record, key, value)
        return record


class NamedTuple(metaclass=_NamedTupleMeta):
    """Subclassed, makes a ``collections.namedtuple`` of the subclass's definition (which, as
    with ``typing.NamedTuple``, is then no subclass of this class)."""
