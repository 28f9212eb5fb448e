"""Static figures: UMAP scatter per task and image galleries (matplotlib, PNG).

Figures are built with matplotlib's object API (``Figure`` rendered by Agg), never
pyplot, so drawing touches no global backend state (a notebook's inline backend
stays as it is). matplotlib is imported only when a figure is drawn; without it the
call raises :class:`PlotDependencyError` (an ``ImportError``) naming the extra.
"""

from __future__ import annotations

import base64
import colorsys
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from featkit.data.images import ImageLoadError, load_image
from featkit.errors import FeatkitError
from featkit.paths import EXPLORE_ELSEWHERE, new_file

PLOT_EXTRA = "plot"
UNKNOWN_COLOUR = "#c8c8c8"


class PlotDependencyError(FeatkitError, ImportError):
    """An optional plotting dependency is missing; the message says what to install."""


def require_matplotlib(what: str = "featkit's plots"):
    """The ``matplotlib`` module, or a PlotDependencyError naming the extra to install."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401  (Figure renders with Agg without pyplot)
    except ImportError:
        raise PlotDependencyError(
            f"{what} need matplotlib, which is not installed; install the plotting extra: "
            f"pip install 'featkit[{PLOT_EXTRA}]' (or pip install 'matplotlib>=3.7')"
        ) from None
    return matplotlib


TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf")
TAB20 = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
         "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d",
         "#17becf", "#9edae5")


def palette(n: int) -> list[str]:
    """``n`` distinct colours as hex (matplotlib's tab10, then tab20, then golden-angle hues).

    Plain constants, so the HTML page and the PNG colour a class alike without matplotlib.
    """
    if n <= len(TAB10):
        return list(TAB10[:n])
    if n <= len(TAB20):
        return list(TAB20[:n])
    out = []
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb((i * 0.618034) % 1.0, 0.45 + 0.15 * (i % 3) / 2, 0.75)
        out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return out


def scatter_figure(coords: np.ndarray, labels: np.ndarray, *, title: str = "",
                   classes: Sequence[str] | None = None):
    """2-D points coloured by class with a legend (unlabelled points grey, underneath): a matplotlib Figure."""
    mpl = require_matplotlib("UMAP plots")
    labels = np.asarray(labels, dtype=object)
    known = np.array([v is not None for v in labels], dtype=bool)
    if classes is None:
        classes = sorted({str(v) for v in labels[known]})
    n = len(coords)
    size = float(np.clip(30000 / max(n, 1), 0.3, 18))
    fig = mpl.figure.Figure(figsize=(9, 7.5))
    ax = fig.subplots()
    if (~known).any():
        ax.scatter(coords[~known, 0], coords[~known, 1], s=size, c=UNKNOWN_COLOUR, linewidths=0,
                   label=f"(unlabelled) ({int((~known).sum())})", rasterized=n > 5000)
    str_labels = np.array([str(v) for v in labels], dtype=object)
    for cls, colour in zip(classes, palette(len(classes))):
        mask = known & (str_labels == cls)
        ax.scatter(coords[mask, 0], coords[mask, 1], s=size, c=colour, linewidths=0, alpha=0.85,
                   label=f"{cls} ({int(mask.sum())})", rasterized=n > 5000)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    legend = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=max(1.0, 6 / size ** 0.5),
                       frameon=False, ncol=1 if len(classes) <= 25 else 2)
    for handle in legend.legend_handles:
        handle.set_alpha(1)
    return fig


def scatter_png(coords: np.ndarray, labels: np.ndarray, path: Path, *, title: str = "",
                classes: Sequence[str] | None = None, dpi: int = 150) -> Path:
    """:func:`scatter_figure` saved as a PNG."""
    fig = scatter_figure(coords, labels, title=title, classes=classes)
    path = Path(path)
    with new_file(path, fix=EXPLORE_ELSEWHERE) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def figure_png(fig, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (what notebooks display)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def thumbnail(path: Path, size: int) -> Image.Image | None:
    """A ``size``-pixel thumbnail, or None when the image cannot be read."""
    try:
        img = load_image(path, draft_size=size)
    except (ImageLoadError, OSError):
        return None
    img.thumbnail((size, size))
    return img


def data_uri(img: Image.Image, quality: int = 80) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_png(paths: Sequence[Path | None], captions: Sequence[str], path: Path, *, title: str = "",
                columns: int = 8, thumb: int = 128, dpi: int = 100) -> Path:
    """A grid of images with a caption under each, row by row.

    A ``None`` path leaves its cell empty (e.g. to start each class on a new row);
    an unreadable image is drawn as a grey box.
    """
    mpl = require_matplotlib("image galleries")
    n = max(len(paths), 1)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    inch = thumb / dpi
    fig = mpl.figure.Figure(figsize=(columns * inch * 1.15, rows * inch * 1.45 + 0.4))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image_path, caption in zip(axes.ravel(), paths, captions):
        if image_path is None:
            continue
        img = thumbnail(Path(image_path), thumb)
        ax.imshow(np.asarray(img) if img is not None else np.full((thumb, thumb, 3), 200, np.uint8))
        ax.set_title(caption, fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    with new_file(path, fix=EXPLORE_ELSEWHERE) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path
