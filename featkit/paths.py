"""User strings that become parts of file names: made safe, or refused with the reason.

Task names are manifest columns, class labels are cell values, variants and run names
are typed by users: any of them may hold ``/``, ``..``, a leading dot or characters a
file system rejects. Names a user chose *as* a file name (a run name, a collection
name) are refused when unsafe (:func:`safe_name`); data values that only label a file
(task, class, backbone/variant) are turned into a safe component (:func:`slug`). No
user string is ever joined to a path unchecked.
"""

from __future__ import annotations

import re
from pathlib import Path

from featkit.errors import FeatkitError

_UNSAFE = re.compile(r"[^\w.+=@-]+")  # \w: letters and digits of any script, and _
MAX_COMPONENT = 96


def slug(text: object, *, fallback: str = "x") -> str:
    """``text`` as one safe file-name component: no separators, no leading dot, bounded length."""
    out = _UNSAFE.sub("-", str(text)).strip("-.")
    out = re.sub(r"-{2,}", "-", out)[:MAX_COMPONENT].rstrip("-.")
    return out or fallback


def safe_name(text: object, *, what: str) -> str:
    """``text`` unchanged if it is already a safe single path component; else a FeatkitError saying why."""
    value = str(text)
    if not value or slug(value, fallback="") != value:
        raise FeatkitError(
            f"{what} {value!r} cannot be used as a file name: use letters, digits and _ . + = @ - "
            f"(no '/', no spaces, not starting with '.', at most {MAX_COMPONENT} characters)"
        )
    return value


def key_folder(key: str) -> str:
    """``mobilenet_v2/imagenet1k_v1`` -> ``mobilenet_v2__imagenet1k_v1`` (one folder per store group)."""
    return "__".join(slug(part) for part in key.split("/", 1))


def inside(root: Path, path: Path, *, what: str) -> Path:
    """``path`` resolved, refused unless it lies within ``root`` (also resolved)."""
    resolved = Path(path).resolve()
    base = Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise FeatkitError(f"{what} {path} is outside {base}; featkit only writes inside the collection folder")
    return resolved
