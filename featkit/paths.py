"""User strings that become parts of file names, and the files featkit writes under them.

Task names are manifest columns, class labels are cell values, variants and run names
are typed by users: any of them may hold ``/``, ``..``, a leading dot, a NUL or more bytes
than a file name may have. The rule:

* a value that comes from DATA and only labels a file (a task, a class, a backbone or
  variant of a store group) goes through :func:`slug`: unchanged when it already is a
  safe name, else its safe characters plus a hash of the original, so it can never leave
  its folder and two different values never share a file;
* a name a user chose *as* a file name (a fit or fine-tuning run, the collection's name)
  goes through :func:`safe_name`: used as typed, or refused with the reason;
* an explicit output path (``--out``, ``-o``, ``--store``, ``--csv``, a ``[store]/[runs]/[explore]``
  path in featkit.toml) is the user's own choice and may lie anywhere they name; featkit
  only ever adds slugged or fixed names below it.

Writes go through :func:`new_file` (a temporary name renamed into place: a full disk
never leaves half a file where a whole one was) and :func:`new_folder` (a folder featkit
made is removed again when filling it fails); a failing disk becomes one
:func:`disk_error` line saying what to do.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from featkit.errors import FeatkitError

_SAFE = re.compile(r"\w[\w.+=@-]*")  # \w: letters and digits of any script, and _; never "." or ".."
_UNSAFE = re.compile(r"[^\w.+=@-]+")
# UTF-8 bytes of one slugged or chosen name (a file name may have 255): a fit run folder joins
# three of them with the head and a timestamp, 3 x 64 + 30 bytes.
MAX_BYTES = 64
_HASH = 8  # hex digits of sha256 added to a changed name: 4e9 values, no two columns of a manifest collide


def is_safe(text: object, *, max_bytes: int = MAX_BYTES) -> bool:
    """Whether ``text`` can be used as one file-name component unchanged."""
    value = str(text)
    return bool(_SAFE.fullmatch(value)) and len(value.encode("utf-8", "surrogatepass")) <= max_bytes


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def slug(text: object) -> str:
    """``text`` as one safe file-name component (see the module docstring).

    ``glaze`` stays ``glaze``; ``../../escaped`` becomes ``escaped-<hash>``, ``a/b`` becomes
    ``a-b-<hash>`` (so it never meets a column named ``a-b``), ``..`` becomes ``<hash>``.
    """
    value = str(text)
    if is_safe(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH]
    base = re.sub(r"-{2,}", "-", _UNSAFE.sub("-", value)).lstrip("-.+=@")
    base = _clip(base, MAX_BYTES - _HASH - 1).rstrip("-.")
    return f"{base}-{digest}" if base else digest


def safe_name(text: object, *, what: str, max_bytes: int = MAX_BYTES) -> str:
    """``text`` unchanged if it is already a safe single path component; else a FeatkitError saying why."""
    value = str(text)
    if not is_safe(value, max_bytes=max_bytes):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise FeatkitError(
            f"{what} {shown!r} cannot be used as a file name: use letters, digits and _ . + = @ - "
            f"(starting with a letter or digit; no '/', no spaces; at most {max_bytes} bytes)"
        )
    return value


def key_folder(key: str) -> str:
    """``mobilenet_v2/imagenet1k_v1`` -> ``mobilenet_v2__imagenet1k_v1`` (one folder per store group)."""
    return "__".join(slug(part) for part in key.split("/", 1))


# -- writing ------------------------------------------------------------------------------
_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_error(err: OSError, path: Path | None = None, *, fix: str = "", writing: bool = True) -> FeatkitError:
    """One line for a failing file operation: what failed, why, and what to do.

    ``fix`` says where else to write (a flag or a featkit.toml key); ``writing=False`` when it
    is not known whether the operation read or wrote (the CLI's last resort).
    """
    where = Path(path) if path is not None else Path(err.filename) if err.filename else None
    what = f" {where}" if where is not None else ""
    reason = (err.strerror or str(err)).lower()
    elsewhere = f", or {fix}" if fix else ""
    if err.errno in _FULL:
        folder = f" of {where.parent}" if where is not None else ""
        return FeatkitError(f"no space left on the disk{folder} while writing{what}; free some space{elsewhere}"
                            f"{',' if fix else ''} and rerun (files written before are unchanged)")
    if err.errno == errno.EROFS or (writing and err.errno in (errno.EACCES, errno.EPERM)):
        return FeatkitError(f"cannot write{what}: {reason}; make the folder writable{elsewhere}")
    if err.errno == errno.ENAMETOOLONG:
        return FeatkitError(f"cannot {'write' if writing else 'use'}{what}: the name is too long for this file "
                            f"system{elsewhere}")
    return FeatkitError(f"cannot {'write' if writing else 'use'}{what}: {reason}{elsewhere}")


RUNS_ELSEWHERE = "pass --out DIR (or set [runs] path in featkit.toml) to write elsewhere"
EXPLORE_ELSEWHERE = "pass --out DIR (or set [explore] path in featkit.toml) to write elsewhere"


@contextmanager
def new_file(final: Path, *, fix: str = "") -> Iterator[Path]:
    """A temporary path beside ``final`` (its folder made if needed) that replaces it when the block succeeds.

    On any failure the temporary file is removed and ``final`` keeps its old content; an
    OSError becomes a :func:`disk_error` naming ``final``.
    """
    final = Path(final)
    # the final name's suffix stays last: writers that infer the format from it (savefig) still can
    tmp = final.with_name(f".featkit-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{final.suffix[:16]}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, final)
    except OSError as err:
        raise disk_error(err, final, fix=fix) from None
    finally:
        if os.path.lexists(tmp):  # unlink of a missing name on a read-only disk fails with EROFS
            tmp.unlink()


@contextmanager
def new_folder(folder: Path, *, fix: str = "") -> Iterator[Path]:
    """``folder``, created if needed; if featkit created it and the block fails, it is removed again.

    A folder that existed before (an explicit ``--out`` written twice) is left as it is.
    """
    folder = Path(folder)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise disk_error(err, folder, fix=fix) from None
    try:
        yield folder
    except BaseException as err:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, OSError):
            raise disk_error(err, Path(err.filename) if err.filename else folder, fix=fix) from None
        raise
