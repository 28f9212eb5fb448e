"""The exploration step of ``featkit demo``: UMAP figures and a separability summary."""

from __future__ import annotations

from featkit.config import Config
from featkit.data.manifest import Collection
from featkit.explore.separability import separability
from featkit.explore.umap import UmapSettings, draw_umap


def demo_step(config: Config, collection: Collection, key: str, opts: dict) -> dict:
    """UMAP of the demo embeddings (PNG per task + HTML) and silhouette / k-NN per task."""
    umap = draw_umap(config, key=key, collection=collection, settings=UmapSettings(max_thumbnails=300))
    sep = separability(config, keys=[key], collection=collection)
    lines = [f"umap ({'cached' if umap.result.cached else f'{umap.result.seconds:.1f} s'}): "
             f"{umap.html} and {len(umap.pngs)} PNGs in {umap.html.parent if umap.html else ''}"]
    for row in sep.rows:
        lines.append(f"separability {row['task']:<11} silhouette {row['silhouette']:+.3f}  k-NN balanced accuracy "
                     f"{row['knn_balanced_accuracy']:.3f} (chance {row['chance_balanced_accuracy']:.3f})")
    return {"umap": umap.to_dict(), "separability": sep.to_dict(), "lines": lines}
