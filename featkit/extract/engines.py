"""Extraction engines: where the backbone runs (this process, or a Ray cluster).

A registry of names (``register_engine`` / ``list_engines`` / ``create_engine``) that
imports nothing heavy: each engine is a class named by dotted path and imported when
created, so ``--engine`` is checked while the CLI parses its arguments and Ray is only
imported by the Ray engine. Every engine implements :class:`featkit.extract.runtime.Engine`:
``placement(settings)`` (device, precision) and ``embed(ids, paths, backbone, settings,
placement)`` yielding :class:`~featkit.extract.runtime.EmbeddedBatch` es.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from featkit.errors import FeatkitError
from featkit.registry import Registry


@dataclass(frozen=True)
class EngineSpec:
    name: str
    target: str  # "module:Class"
    description: str
    requires: str | None = None  # the extra that installs it, for the error message


_ENGINES: Registry[EngineSpec] = Registry("engine")


def register_engine(spec: EngineSpec) -> EngineSpec:
    return _ENGINES.register(spec.name, spec)


def list_engines() -> list[str]:
    return _ENGINES.names()


def get_engine_spec(name: str) -> EngineSpec:
    return _ENGINES.get(name)


def create_engine(name: str):
    """An instance of engine ``name`` (its module is imported now)."""
    spec = get_engine_spec(name)
    module, _, cls = spec.target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)()
    except ImportError as err:
        hint = f": pip install 'featkit[{spec.requires}]'" if spec.requires else ""
        raise FeatkitError(f"the {name} engine cannot be loaded ({err}){hint}") from None


register_engine(EngineSpec("local", "featkit.extract.runtime:LocalEngine",
                           "this process: DataLoader decoding workers, the backbone on one device"))
register_engine(EngineSpec("ray", "featkit.extract.ray_engine:RayEngine",
                           "a Ray cluster: decoding tasks, one embedding actor per GPU", requires="ray"))
