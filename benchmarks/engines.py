"""The engine sections of the benchmark, in the report's order: anypool on Ray against Ray's own
API (``on_ray``), anypool on Dask against Dask's own API (``on_dask``)."""

from __future__ import annotations

from benchmarks import on_dask, on_ray
from benchmarks.contenders import Contender
from benchmarks.scenarios import EngineSection, Scenario

SECTIONS: tuple[EngineSection, ...] = (on_ray.SECTION, on_dask.SECTION)

SCENARIOS: tuple[Scenario, ...] = tuple(s for section in SECTIONS for s in section.scenarios)
"""Every engine section's scenarios."""


def by_group(group: str) -> EngineSection:
    for section in SECTIONS:
        if section.group == group:
            return section
    raise KeyError(group)


def by_key(key: str) -> Scenario:
    """The scenario ``key`` of an engine section."""
    for scenario in SCENARIOS:
        if scenario.key == key:
            return scenario
    raise KeyError(key)


def contender(name: str) -> Contender | None:
    """The contender of an engine section called ``name``, if there is one."""
    for section in SECTIONS:
        for candidate in section.contenders:
            if candidate.name == name:
                return candidate
    return None
