"""``featkit.toml``: where a collection's settings live, found in the collection's folder.

Every command reads it and every setting can be overridden by a flag
(:meth:`Config.replace`). Paths in the file are relative to the file's folder. The
config also owns every path featkit writes below the collection: the store, the runs
(fit and fine-tune), exploration output and caches; user strings that become part of
one of those paths go through :mod:`featkit.paths` (chosen names are checked, names made
from data are slugged). The file itself is validated as it is read: every table and key is
known, every value has its type, and each message names the file, the key and what to write.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featkit.errors import FeatkitError
from featkit.paths import key_folder, safe_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as a package
    import tomli as tomllib

CONFIG_NAME = "featkit.toml"

# [collection] keys: name -> (expected type(s), what to write)
_COLLECTION_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "manifest": ((str,), "a string (a CSV path relative to featkit.toml)"),
    "image_folder": ((str,), "a string (a folder relative to featkit.toml)"),
    "image_column": ((str,), "a string (a column of the manifest)"),
    "tasks": ((list, str), "a list of column names"),
    "group": ((str,), "a string (a column of the manifest)"),
    "split": ((str,), "a string (a column of the manifest)"),
}
# other tables: table -> key -> (types, what)
_PATH_TABLES: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "store": {"path": ((str,), "a string (an .h5 path relative to featkit.toml)")},
    "runs": {"path": ((str,), "a string (a folder relative to featkit.toml)")},
    "explore": {"path": ((str,), "a string (a folder relative to featkit.toml)")},
}


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
    runs: Path | None = None  # default runs/
    explore: Path | None = None  # default explore/

    # -- paths featkit writes ----------------------------------------------------------
    def _under_root(self, path: Path) -> Path:
        return path if path.is_absolute() else self.root / path

    @property
    def store_path(self) -> Path:
        return self._under_root(self.store or Path("features") / f"{safe_name(self.name, what='collection name')}.h5")

    @property
    def runs_dir(self) -> Path:
        """Where ``featkit fit`` writes its run folders (and fine-tuning runs, under ``finetune/``)."""
        return self._under_root(self.runs or Path("runs"))

    @property
    def finetune_dir(self) -> Path:
        return self.runs_dir / "finetune"

    def run_dir(self, name: str) -> Path:
        """The folder of fit run ``name`` (a single safe path component)."""
        return self.runs_dir / safe_name(name, what="run name")

    def finetune_run_dir(self, name: str) -> Path:
        return self.finetune_dir / safe_name(name, what="fine-tuning run name")

    @property
    def explore_root(self) -> Path:
        return self._under_root(self.explore or Path("explore"))

    def explore_dir(self, key: str) -> Path:
        """Exploration output of store group ``key`` (``explore/<backbone>__<variant>/``)."""
        return self.explore_root / key_folder(key)

    @property
    def cache_dir(self) -> Path:
        """Derived files that can always be made again (thumbnails)."""
        return self.explore_root / ".cache"

    @property
    def manifest_path(self) -> Path | None:
        return None if self.manifest is None else self._under_root(self.manifest)

    @property
    def image_folder_path(self) -> Path | None:
        return None if self.image_folder is None else self._under_root(self.image_folder)

    @property
    def labels_folder(self) -> Path:
        """The folder beside which label files live (the manifest's, else featkit.toml's)."""
        return self.manifest_path.parent if self.manifest_path is not None else self.root

    def replace(self, **changes: Any) -> "Config":
        """A copy with the non-None ``changes`` applied (how CLI flags override the file)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        for key in ("manifest", "image_folder", "store", "runs", "explore"):
            if key in changes:
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
        store = self.store or Path("features") / f"{safe_name(self.name, what='collection name')}.h5"
        doc: dict = {"collection": coll, "store": {"path": store.as_posix()}}
        if self.runs is not None:
            doc["runs"] = {"path": self.runs.as_posix()}
        if self.explore is not None:
            doc["explore"] = {"path": self.explore.as_posix()}
        return doc

    def write(self, path: Path | None = None) -> Path:
        import tomli_w

        path = Path(path) if path else self.root / CONFIG_NAME
        path.write_text(tomli_w.dumps(self.to_toml()))
        return path

    @classmethod
    def read(cls, path: Path) -> "Config":
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FeatkitError(f"no {CONFIG_NAME} at {path}") from None
        except UnicodeDecodeError as err:
            raise FeatkitError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
        except tomllib.TOMLDecodeError as err:
            raise FeatkitError(f"{path} is not valid TOML: {err}") from None
        except OSError as err:
            raise FeatkitError(f"cannot read {path}: {err.strerror or err}") from None
        unknown = sorted(set(doc) - {"collection", *_PATH_TABLES})
        if unknown:
            raise FeatkitError(f"{path}: unknown table(s) {', '.join(f'[{t}]' for t in unknown)}; valid tables: "
                               f"{', '.join(f'[{t}]' for t in ('collection', *_PATH_TABLES))}")
        coll = doc.get("collection")
        if not isinstance(coll, dict) or "name" not in coll:
            raise FeatkitError(f"{path} has no [collection] table with a name (e.g. [collection] name = \"pots\")")
        _check_table(path, "collection", coll, _COLLECTION_KEYS)
        paths = {}
        for table, keys in _PATH_TABLES.items():
            value = doc.get(table, {})
            if not isinstance(value, dict):
                raise FeatkitError(f"{path}: [{table}] must be a table (e.g. [{table}] path = \"...\"), got "
                                   f"{_shown(value)}")
            _check_table(path, table, value, keys)
            paths[table] = Path(value["path"]) if value.get("path") else None
        name = safe_name(coll["name"], what=f"{path}: [collection] name")
        return cls(
            root=path.parent.resolve(),
            name=name,
            manifest=Path(coll["manifest"]) if coll.get("manifest") else None,
            image_folder=Path(coll["image_folder"]) if coll.get("image_folder") else None,
            image_column=coll.get("image_column", "image"),
            tasks=_tasks(coll.get("tasks", ()), path),
            group=coll.get("group") or None,
            split=coll.get("split") or None,
            store=paths["store"],
            runs=paths["runs"],
            explore=paths["explore"],
        )


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{value!r} ({kind.get(type(value), type(value).__name__)})"


def _check_table(path: Path, table: str, values: dict, keys: dict[str, tuple[tuple[type, ...], str]]) -> None:
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise FeatkitError(f"{path}: unknown key(s) {', '.join(unknown)} in [{table}]; valid keys: "
                           f"{', '.join(sorted(keys))}")
    for key, value in values.items():
        types, what = keys[key]
        if isinstance(value, bool) or not isinstance(value, types):  # TOML booleans are not strings or lists
            raise FeatkitError(f"{path}: [{table}] {key} must be {what}, got {_shown(value)}")


def _tasks(value, path: Path) -> tuple[str, ...]:
    """``tasks`` as written by hand: a list of column names, or one name as a string."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise FeatkitError(f"{path}: [collection] tasks must be a list of column names (strings), got {value!r}")
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
