"""``featkit.toml``: where a collection's settings live, found in the current folder.

Every command reads it and every setting can be overridden by a flag
(:meth:`Config.replace`). Paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from featkit.errors import FeatkitError

CONFIG_NAME = "featkit.toml"


@dataclass(frozen=True)
class Config:
    """A collection's settings. ``root`` is the folder that holds ``featkit.toml``."""

    root: Path
    name: str
    manifest: Path | None = None  # CSV, relative to root (or absolute)
    image_folder: Path | None = None  # ImageFolder tree instead of a CSV
    image_column: str = "image"
    tasks: tuple[str, ...] = ()
    group: str | None = None
    split: str | None = None
    store: Path | None = None  # default features/<name>.h5
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def store_path(self) -> Path:
        store = self.store or Path("features") / f"{self.name}.h5"
        return store if store.is_absolute() else self.root / store

    @property
    def manifest_path(self) -> Path | None:
        if self.manifest is None:
            return None
        return self.manifest if self.manifest.is_absolute() else self.root / self.manifest

    @property
    def image_folder_path(self) -> Path | None:
        if self.image_folder is None:
            return None
        folder = self.image_folder
        return folder if folder.is_absolute() else self.root / folder

    def replace(self, **changes) -> "Config":
        """A copy with the non-None ``changes`` applied (how CLI flags override the file)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        for key in ("manifest", "image_folder", "store"):
            if key in changes and changes[key] is not None:
                changes[key] = Path(changes[key])
        if "tasks" in changes:
            changes["tasks"] = tuple(changes["tasks"])
        return dataclasses.replace(self, **changes)

    # -- file round trip -------------------------------------------------------------
    def to_toml(self) -> dict:
        coll: dict = {"name": self.name, "image_column": self.image_column, "tasks": list(self.tasks)}
        if self.manifest is not None:
            coll["manifest"] = self.manifest.as_posix()
        if self.image_folder is not None:
            coll["image_folder"] = self.image_folder.as_posix()
        if self.group:
            coll["group"] = self.group
        if self.split:
            coll["split"] = self.split
        doc = {"collection": coll, "store": {"path": (self.store or Path("features") / f"{self.name}.h5").as_posix()}}
        doc.update(self.extra)
        return doc

    def write(self, path: Path | None = None) -> Path:
        path = Path(path) if path else self.root / CONFIG_NAME
        path.write_text(tomli_w.dumps(self.to_toml()))
        return path

    @classmethod
    def read(cls, path: Path) -> "Config":
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise FeatkitError(f"no {CONFIG_NAME} at {path}") from None
        except tomllib.TOMLDecodeError as err:
            raise FeatkitError(f"{path} is not valid TOML: {err}") from None
        coll = doc.get("collection")
        if not isinstance(coll, dict) or "name" not in coll:
            raise FeatkitError(f"{path} has no [collection] table with a name")
        known = {"name", "manifest", "image_folder", "image_column", "tasks", "group", "split"}
        unknown = set(coll) - known
        if unknown:
            raise FeatkitError(
                f"{path}: unknown key(s) {', '.join(sorted(unknown))} in [collection]; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        store = doc.get("store", {}).get("path")
        extra = {k: v for k, v in doc.items() if k not in ("collection", "store")}
        return cls(
            root=path.parent.resolve(),
            name=str(coll["name"]),
            manifest=Path(coll["manifest"]) if coll.get("manifest") else None,
            image_folder=Path(coll["image_folder"]) if coll.get("image_folder") else None,
            image_column=str(coll.get("image_column", "image")),
            tasks=_tasks(coll.get("tasks", ()), path),
            group=coll.get("group") or None,
            split=coll.get("split") or None,
            store=Path(store) if store else None,
            extra=extra,
        )


def _tasks(value, path: Path) -> tuple[str, ...]:
    """``tasks`` as written by hand: a list of column names, or one name as a string."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise FeatkitError(f"{path}: tasks must be a list of column names, got {value!r}")
    return tuple(value)


def find_config(start: Path | None = None) -> Config:
    """The ``featkit.toml`` in ``start`` (default: the current folder)."""
    folder = Path(start or Path.cwd()).resolve()
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FeatkitError(
            f"no {CONFIG_NAME} in {folder}; run `featkit init --manifest labels.csv` "
            "(or `featkit init --image-folder DIR`) there first, or pass --config"
        )
    return Config.read(path)
