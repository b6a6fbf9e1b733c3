"""A MkDocs hook (mkdocs.yml): the API reference (docs/api.md) documents exactly the names of
``anypool.__all__``. The page groups them by topic; a name it does not list yet (one just added
to ``__all__``) is documented at its end, under "Other names", and a name it lists that
``__all__`` no longer has is left out, so that a change to the API never breaks the build."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

PAGE = "api.md"
INIT = Path(__file__).resolve().parents[2] / "src" / "anypool" / "__init__.py"
ENTRY = re.compile(r"^::: anypool\.(\w+)[ \t]*\n(?:[ \t]+.*\n)*", re.MULTILINE)

log = logging.getLogger("mkdocs.hooks.api_page")


def public_names() -> list[str]:
    """``anypool.__all__``, read from the source (anypool is not imported)."""
    for node in ast.parse(INIT.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return [ast.literal_eval(element) for element in node.value.elts]  # type: ignore[attr-defined]
    raise LookupError(f"no __all__ in {INIT}")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    names = public_names()

    def keep_public(entry: re.Match[str]) -> str:
        if entry[1] in names:
            return entry[0]
        log.info("%s: leaving out anypool.%s, which is not in anypool.__all__", PAGE, entry[1])
        return ""

    markdown = ENTRY.sub(keep_public, markdown)
    documented = set(ENTRY.findall(markdown))
    missing = [name for name in names if name not in documented]
    if missing:
        log.info("%s: adding %s under 'Other names'", PAGE, ", ".join(missing))
        blocks = "\n\n".join(f"::: anypool.{name}" for name in missing)
        markdown = f"{markdown.rstrip()}\n\n## Other names\n\n{blocks}\n"
    return markdown
