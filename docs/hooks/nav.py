"""A MkDocs hook (mkdocs.yml): the entry ``"..."`` of the nav stands for every page of docs/
that the nav does not name, in file-name order, so that a page added to docs/ is on the site
without an edit here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLACEHOLDER = "..."


def named(entries: list[Any]) -> set[str]:
    """The pages the nav names."""
    pages: set[str] = set()
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            pages |= named(value)
        elif isinstance(value, str):
            pages.add(value)
    return pages


def on_config(config: Any) -> Any:
    nav = config.nav
    if not nav or PLACEHOLDER not in nav:
        return config
    docs = Path(config.docs_dir)
    listed = named(nav)
    rest = sorted(
        page
        for page in (path.relative_to(docs).as_posix() for path in docs.rglob("*.md"))
        if page not in listed and not page.startswith("hooks/")
    )
    at = nav.index(PLACEHOLDER)
    config.nav = [*nav[:at], *rest, *nav[at + 1 :]]
    return config
