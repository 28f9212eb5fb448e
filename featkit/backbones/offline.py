"""``featkit weights import``: match a checkpoint to the registry by its sha256."""

from __future__ import annotations

from pathlib import Path

from featkit.backbones.registry import get_backbone_spec, list_backbones
from featkit.backbones.weights import file_sha256, install_into_cache
from featkit.errors import FeatkitError


def import_weights(path: Path) -> dict:
    """Place ``path`` in the hub cache under the name whose hash prefix its sha256 matches."""
    path = Path(path)
    digest = file_sha256(path)
    matches = []
    for name in list_backbones():
        spec = get_backbone_spec(name)
        for tag, wspec in spec.weights.items():
            prefix = wspec.file.sha256_prefix
            if prefix and digest.startswith(prefix):
                matches.append((f"{name}.{tag}", wspec.file))
    if not matches:
        same_name = [f"{n}.{t}" for n in list_backbones() for t, w in get_backbone_spec(n).weights.items()
                     if w.file.filename == path.name]
        hint = (f"; a file named {path.name} is expected for {', '.join(same_name)} but its hash differs "
                "(corrupt or a different file)") if same_name else ""
        raise FeatkitError(
            f"{path} (sha256 {digest[:12]}…) matches no registered weights{hint}. "
            "Run `featkit backbones` to see the expected file names"
        )
    target = matches[0][1]
    dest = install_into_cache(path, target)
    return {"file": str(path), "sha256": digest, "cache_path": str(dest), "backbones": [m[0] for m in matches]}
