"""A Griffe extension for the API reference (mkdocs.yml): anypool's docstrings name other
objects with Sphinx roles (``:class:`Pool```, ``:meth:`close```), which Markdown would show as
written. Each becomes the name in code, linked to that object's entry where the reference
documents it (an optional cross-reference: a name the reference leaves out, or one outside
anypool, stays plain code, without a warning)."""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:attr|class|data|exc|func|meth|mod|obj):`(?P<target>[^`]+)`")


def identifier(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as named in ``obj``'s docstring, or ``None``."""
    if target.startswith("."):  # relative to the module: .remote.run_stream_call
        return f"{obj.module.package.path}{target}" if obj.module.package else None
    first, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            path = scope.resolve(first)
        except (griffe.NameResolutionError, AttributeError):
            scope = scope.parent
            continue
        return f"{path}.{rest}" if rest else path
    return target if "." in target else None


def rewrite(obj: griffe.Object, docstring: str) -> str:
    def replace(match: re.Match[str]) -> str:
        target = match["target"].lstrip("!")
        shown = target.lstrip("~")
        if target.startswith("~"):
            shown = shown.rpartition(".")[2]
        code = f"<code>{html.escape(shown)}</code>"
        path = identifier(obj, target.lstrip("~"))
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    return ROLE.sub(replace, docstring)


def visit(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = rewrite(obj, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            visit(member, seen)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrites the roles once the whole package is loaded, so that every name resolves."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        visit(pkg, set())

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # The same hook in Griffe before 1.14; rewriting twice changes nothing.
        visit(pkg, set())
