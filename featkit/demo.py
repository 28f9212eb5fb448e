"""The embedded default collection: rendered vessels with correlated attributes.

``make_demo_collection`` draws a small deterministic set of porcelain-like vessels
(several views of each object) labelled by form, glaze, decoration and period, with
period correlated to glaze and decoration and classes imbalanced — the shape of a
real museum collection. ``run_demo`` runs the main job on it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FORMS = ("vase", "bowl", "plate", "jar")
GLAZES = {  # base colour, decoration colour
    "celadon": ((150, 180, 150), (110, 140, 110)),
    "blue_white": ((235, 235, 228), (40, 60, 150)),
    "sancai": ((205, 160, 70), (60, 120, 60)),
    "copper_red": ((150, 30, 35), (220, 200, 180)),
    "tea_dust": ((95, 90, 45), (140, 130, 70)),
}
DECORATIONS = ("plain", "bands", "floral", "waves")
# period -> (probability, glaze weights, decoration weights)
PERIODS = {
    "tang": (0.15, {"sancai": 0.8, "celadon": 0.2}, {"plain": 0.5, "bands": 0.3, "floral": 0.2}),
    "song": (0.30, {"celadon": 0.7, "tea_dust": 0.2, "copper_red": 0.1}, {"plain": 0.7, "waves": 0.2, "bands": 0.1}),
    "ming": (0.35, {"blue_white": 0.75, "copper_red": 0.15, "celadon": 0.1}, {"floral": 0.5, "waves": 0.3, "bands": 0.2}),
    "qing": (0.20, {"copper_red": 0.45, "blue_white": 0.35, "tea_dust": 0.2}, {"plain": 0.4, "floral": 0.4, "bands": 0.2}),
}
FORM_WEIGHTS = {"vase": 0.4, "bowl": 0.3, "plate": 0.2, "jar": 0.1}


@dataclass(frozen=True)
class DemoObject:
    object_id: str
    form: str
    glaze: str
    decoration: str
    period: str


def _choice(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _profile(form: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half-width of the vessel at heights t in [0, 1] (0 = foot, 1 = mouth)."""
    w = rng.uniform(0.9, 1.1)
    if form == "vase":
        r = 0.16 + 0.22 * np.sin(np.pi * np.clip(t * 1.25, 0, 1)) ** 1.5 + 0.06 * (t > 0.85)
    elif form == "bowl":
        r = 0.14 + 0.30 * np.sqrt(t)
    elif form == "plate":
        r = 0.20 + 0.25 * np.clip(t * 3, 0, 1)
    else:  # jar
        r = 0.18 + 0.22 * np.sin(np.pi * (0.15 + 0.7 * t)) + 0.02 * (t > 0.9)
    return r * w


def _height(form: str) -> float:
    return {"vase": 0.78, "bowl": 0.40, "plate": 0.18, "jar": 0.62}[form]


def render(obj: DemoObject, view: int, *, size: int = 160, seed: int = 0) -> Image.Image:
    """One photograph of ``obj``: view changes angle, scale, background and light."""
    rng = np.random.default_rng([seed, int(obj.object_id.split("-")[1]), view])
    shape_rng = np.random.default_rng([seed, int(obj.object_id.split("-")[1])])
    bg = np.array([rng.uniform(60, 200)] * 3) + rng.normal(0, 12, 3)
    grad = np.linspace(0.85, 1.15, size)[:, None, None]
    canvas = np.clip(bg[None, None, :] * grad * np.ones((size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(img)
    scale = size * rng.uniform(0.85, 1.05)
    cx = size / 2 + rng.uniform(-0.06, 0.06) * size
    height = _height(obj.form) * scale
    base_y = size * 0.5 + height / 2 + rng.uniform(-0.04, 0.04) * size
    t = np.linspace(0, 1, 40)
    half = _profile(obj.form, t, shape_rng) * scale
    ys = base_y - t * height
    poly = [(cx - h, y) for h, y in zip(half, ys)] + [(cx + h, y) for h, y in zip(half[::-1], ys[::-1])]
    base, deco = GLAZES[obj.glaze]
    light = rng.uniform(0.85, 1.15)
    base_c = tuple(int(np.clip(c * light, 0, 255)) for c in base)
    deco_c = tuple(int(np.clip(c * light, 0, 255)) for c in deco)
    draw.polygon(poly, fill=base_c, outline=tuple(int(c * 0.6) for c in base_c))
    if obj.glaze == "sancai":  # splashes of a third colour
        for _ in range(6):
            k = shape_rng.integers(5, 35)
            x, y = cx + shape_rng.uniform(-0.6, 0.6) * half[k], ys[k]
            r = size * 0.03
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(230, 220, 170))
    if obj.decoration == "bands":
        for frac in (0.3, 0.55, 0.8):
            k = int(frac * 39)
            draw.line([(cx - half[k], ys[k]), (cx + half[k], ys[k])], fill=deco_c, width=max(2, size // 50))
    elif obj.decoration == "floral":
        for _ in range(7):
            k = int(shape_rng.integers(8, 34))
            x, y = cx + shape_rng.uniform(-0.6, 0.6) * half[k], ys[k]
            r = size * 0.02
            for a in range(5):
                ang = 2 * math.pi * a / 5
                px, py = x + 1.6 * r * math.cos(ang), y + 1.6 * r * math.sin(ang)
                draw.ellipse([px - r, py - r, px + r, py + r], fill=deco_c)
    elif obj.decoration == "waves":
        for frac in (0.35, 0.6):
            k = int(frac * 39)
            xs = np.linspace(cx - half[k] * 0.9, cx + half[k] * 0.9, 20)
            pts = [(x, ys[k] + size * 0.02 * math.sin(i * 1.2)) for i, x in enumerate(xs)]
            draw.line(pts, fill=deco_c, width=max(2, size // 60))
    angle = rng.uniform(-8, 8)
    img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=tuple(int(c) for c in bg.clip(0, 255)))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))


def demo_objects(n_objects: int, seed: int = 0) -> list[DemoObject]:
    rng = np.random.default_rng(seed)
    objects = []
    for i in range(n_objects):
        period = _choice(rng, {p: v[0] for p, v in PERIODS.items()})
        _, glazes, decos = PERIODS[period]
        objects.append(DemoObject(f"obj-{i:04d}", _choice(rng, FORM_WEIGHTS), _choice(rng, glazes),
                                  _choice(rng, decos), period))
    return objects


def make_demo_collection(out: Path, *, n_objects: int = 150, views: int = 2, size: int = 160, seed: int = 0) -> Path:
    """Write ``out/images/*.jpg`` and ``out/labels.csv``; return the manifest path.

    Deterministic: the same arguments give byte-identical files.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for obj in demo_objects(n_objects, seed):
        for view in range(views):
            rel = f"images/{obj.object_id}_v{view}.jpg"
            path = out / rel
            if not path.exists():  # whole or not at all: a killed demo must not leave half an image to reuse
                part = path.with_suffix(".part")
                render(obj, view, size=size, seed=seed).save(part, format="JPEG", quality=90)
                part.replace(path)
            rows.append({"image": rel, "form": obj.form, "glaze": obj.glaze, "decoration": obj.decoration,
                         "period": obj.period, "object_id": obj.object_id})
    manifest = out / "labels.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_demo(out: Path, *, backbone: str = "mobilenet_v2", n_objects: int = 150, progress: bool = True,
             extract_settings: dict | None = None) -> dict:
    """Make the demo collection in ``out`` and run the main job on it, through the Python API.

    Extract (real weights), a logreg head per task (3 group-aware folds), the UMAP
    figures and page, separability per task. Returns what each step gave, plus the
    human-readable ``lines`` ``featkit demo`` prints.
    """
    from featkit.api import open as open_collection
    from featkit.config import Config
    from featkit.explore.separability import separability
    from featkit.explore.umap import UmapSettings, draw_umap

    out = Path(out).resolve()
    manifest = make_demo_collection(out, n_objects=n_objects)
    Config(root=out, name="vessels", manifest=Path(manifest.name), image_column="image",
           tasks=("form", "glaze", "decoration", "period"), group="object_id").write()
    col = open_collection(out)
    summary = col.extract_summary(backbone, **{"progress": progress, **(extract_settings or {})})
    emb = col.embeddings(key=summary.key)
    results = {"collection": str(out), "images": len(col), "extract": summary.to_dict(), "store": col.store.info()}
    lines = []
    heads = {}
    for task in col.tasks:
        res = emb.fit(task, "logreg", cv=3)
        run_dir = res.save()
        m = res.metrics
        heads[task] = {"run": str(run_dir), **m}
        lines.append(f"fit {task} (logreg, {res.report['split']['description']}): balanced accuracy "
                     f"{m['balanced_accuracy']:.3f} (chance {m['chance_balanced_accuracy']:.3f}), "
                     f"macro-F1 {m['macro_f1']:.3f} → {run_dir}")
    umap = draw_umap(emb, settings=UmapSettings(max_thumbnails=300))
    sep = separability([emb])
    lines.append(f"umap ({'cached' if umap.result.cached else f'{umap.result.seconds:.1f} s'}): "
                 f"{umap.html} and {len(umap.pngs)} PNGs in {umap.html.parent if umap.html else ''}")
    for row in sep.rows:
        lines.append(f"separability {row['task']:<11} silhouette {row['silhouette']:+.3f}  k-NN balanced accuracy "
                     f"{row['knn_balanced_accuracy']:.3f} (chance {row['chance_balanced_accuracy']:.3f})")
    results.update(heads=heads, umap=umap.to_dict(), separability=sep.to_dict(), lines=lines)
    return results
