"""One small registry type for every pluggable kind (backbones, heads, samplers, TTA modes, engines).

Each kind keeps its own module-level :class:`Registry` and its own ``register_*`` /
``list_*`` / ``create_*`` functions (timm's shape); this class holds what they share:
a name registered twice is a ValueError (as torchvision's registry does), an unknown
name is a FeatkitError that lists the valid choices, and listing takes an fnmatch
pattern. It imports nothing, so a registry can be read while the CLI parses.
"""

from __future__ import annotations

import fnmatch
from typing import Generic, Iterator, TypeVar

from featkit.errors import FeatkitError, choices_message

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching ``pattern`` (fnmatch), in registration order."""
        return [name for name in self._entries if fnmatch.fnmatch(name, pattern)]

    def get(self, name: str) -> T:
        """The entry called ``name``; else a FeatkitError naming the valid choices."""
        if name not in self._entries:
            raise FeatkitError(choices_message(self.kind, name, list(self._entries)))
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
