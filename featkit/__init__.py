"""featkit: cached CNN embeddings and per-task heads for multi-label image collections.

    import featkit as fk
    col = fk.open("my-collection")
    emb = col.extract("resnet50")
    res = emb.fit("glaze", clf="lgbm")

See :mod:`featkit.api`. The names below load on first use: ``import featkit`` is light.
"""

from featkit._version import __version__
from featkit.errors import FeatkitError

_API = ("open", "Collection", "Embeddings")

__all__ = ["FeatkitError", "__version__", *_API, "FitResult", "FitSettings"]


def __getattr__(name: str):
    if name in _API:
        from featkit import api

        return getattr(api, name)
    if name in ("FitResult", "FitSettings"):
        from featkit import fit

        return getattr(fit, name)
    raise AttributeError(f"module 'featkit' has no attribute {name!r}")
