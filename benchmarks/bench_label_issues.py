"""Label issues against labels flipped on purpose: precision and recall of the flagged set, precision@k.

    nice -n 10 .venv/bin/python benchmarks/bench_label_issues.py                 # clothing kids, porcelain dynasty
    nice -n 10 .venv/bin/python benchmarks/bench_label_issues.py --json
    nice -n 10 .venv/bin/python benchmarks/bench_label_issues.py --only porcelain:dynasty clothing:label --C 0.01

For each dataset:task, on the shared real datasets embedded with MobileNetV2 (the store the
tests cache in .pytest_cache, extracted once if missing): ``--rate`` of the task's learnable
labels (classes ``fit`` would leave out are left out here too) are moved to another class
chosen uniformly at random (``numpy.random.default_rng(--seed)``), then
:func:`featkit.explore.label_issues.planted_noise` runs what ``featkit label-issues`` runs
(group-aware out-of-fold logreg probabilities, C by inner CV unless ``--C``; confident
learning). Printed per row: flips, flagged, precision and recall of the flagged set against
the flips, precision@k over the whole ranking with k = the number of flips, how often the
suggestion of a found flip is its true label, and — from the same probabilities — precision
and recall of the confident joint's off-diagonal set (cleanlab ``filter_by=
"confident_learning"``: what featkit flagged before issue 12).

Precision is a lower bound: the datasets carry label errors of their own, which count as
false positives here. cpac-porcelain holds byte-identical copies of 255 images; flips land on
them like on any row, and the copies are not kept in one fold (the collection has no group
column), so a flipped copy may be judged by a head that trained on its unflipped twin. The
``twins`` column says how many flips have a twin, the recall on those, and how many unflipped
twins of flipped images were flagged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = {
    "clothing": {"folder": "clothing", "tasks": ("label", "kids"), "group": "sender_id"},
    "porcelain": {"folder": "cpac-porcelain", "tasks": ("dynasty",), "split": "source_split", "twins": "duplicate_of"},
}
DEFAULT = ("clothing:kids", "porcelain:dynasty")


def open_embeddings(name: str, datasets: Path):
    """MobileNetV2 embeddings of a shared dataset, in the test cache (extracted once)."""
    from featkit.api import Collection
    from featkit.config import Config

    spec = DATASETS[name]
    labels = datasets / spec["folder"] / "labels.csv"
    if not labels.is_file():
        sys.exit(f"dataset {spec['folder']!r} not found at {labels.parent} (set FEATKIT_DATASETS)")
    fields = {k: v for k, v in spec.items() if k in ("group", "split")}
    config = Config(root=REPO / ".pytest_cache" / "d" / "featkit-real" / spec["folder"], name=spec["folder"],
                    manifest=labels.resolve(), image_column="image", tasks=spec["tasks"], **fields)
    col = Collection(config)
    if not col.store.exists():
        print(f"extracting {name} features into {config.store_path} (once) ...", file=sys.stderr, flush=True)
    return col.extract("mobilenet_v2", progress=False), labels


def twin_columns(found, labels: Path, column: str) -> dict:
    """Flips that have a byte-identical copy, the recall on them, unflipped copies of flipped images flagged."""
    frame = pd.read_csv(labels, dtype=str, keep_default_na=False)
    original = dict(zip(frame["image"], frame[column].where(frame[column] != "", frame["image"])))
    family = np.array([original[i] for i in found.ids], dtype=object)
    sizes = pd.Series(family).map(pd.Series(family).value_counts()).to_numpy()
    flagged = np.zeros(len(found.ids), bool)
    flagged[found.result.issues["position"].to_numpy()] = True
    twin_flip = found.flipped & (sizes > 1)
    flipped_families = set(family[found.flipped])
    innocent = ~found.flipped & np.isin(family, list(flipped_families))
    return {"flips_with_twin": int(twin_flip.sum()),
            "recall_with_twin": round(float(flagged[twin_flip].mean()), 3) if twin_flip.any() else None,
            "recall_without_twin": round(float(flagged[found.flipped & (sizes == 1)].mean()), 3),
            "unflipped_twins_flagged": int((flagged & innocent).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=list(DEFAULT), metavar="DATASET:TASK",
                        help=f"default: {' '.join(DEFAULT)}; datasets: {', '.join(DATASETS)}")
    parser.add_argument("--rate", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--C", type=float, default=None, help="fix logreg's C (default: inner CV in each fold)")
    parser.add_argument("--rank-by", default="self_confidence")
    parser.add_argument("--rebalance", default="none", help="of the head (featkit fit's default is auto)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from cleanlab.filter import find_label_issues

    from featkit.explore.label_issues import LabelIssueSettings, planted_noise

    datasets = Path(os.environ.get("FEATKIT_DATASETS", REPO.parent / "shared" / "datasets"))
    settings = LabelIssueSettings(C=args.C, rebalance=args.rebalance, rank_by=args.rank_by, gallery=False)
    rows = []
    for item in args.only:
        name, task = item.split(":")
        emb, labels = open_embeddings(name, datasets)
        start = time.perf_counter()
        found = planted_noise(emb, task, rate=args.rate, seed=args.seed, settings=settings)
        row = {"dataset": name, **found.summary(), "seconds": round(time.perf_counter() - start, 1)}
        given = np.array([found.result.classes.index(v) for v in found.given])
        before = find_label_issues(given, found.proba, filter_by="confident_learning", n_jobs=1)
        tp = int((before & found.flipped).sum())
        row["before"] = {"flagged": int(before.sum()), "precision": round(tp / max(before.sum(), 1), 3),
                         "recall": round(tp / max(found.flipped.sum(), 1), 3)}
        if "twins" in DATASETS[name]:
            row["twins"] = twin_columns(found, labels, DATASETS[name]["twins"])
        rows.append(row)
        if not args.json:
            print(f"{name}:{task} done in {row['seconds']} s", file=sys.stderr, flush=True)
    meta = {"rate": args.rate, "seed": args.seed, "C": args.C or "inner CV", "rebalance": args.rebalance,
            "rank_by": args.rank_by,
            "backbone": "mobilenet_v2/imagenet1k_v1", "head": "logreg", "load_average": round(os.getloadavg()[0], 1)}
    if args.json:
        print(json.dumps({**meta, "rows": rows}, indent=2))
        return
    print(f"{args.rate:.0%} of labels flipped (seed {args.seed}); logreg on MobileNetV2, C {meta['C']}, "
          f"rebalance {args.rebalance}; ranked by {args.rank_by}")
    head = ("| dataset:task | n | classes | flips | flagged | precision | recall | precision@k | suggestion = true "
            "| before: flagged / precision / recall |")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for r in rows:
        b = r["before"]
        print(f"| {r['dataset']}:{r['task']} | {r['n']} | {r['classes']} | {r['flips']} | {r['flagged']} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | {r['precision_at_k']:.3f} | {r['suggested_true']:.3f} | "
              f"{b['flagged']} / {b['precision']:.3f} / {b['recall']:.3f} |")
    for r in rows:
        if r["left_out"]:
            print(f"{r['dataset']}:{r['task']} left out: " + "; ".join(f"{c} ({why})" for c, why in r["left_out"].items()))
        if "twins" in r:
            print(f"{r['dataset']}:{r['task']} byte-identical copies: {r['twins']}")


if __name__ == "__main__":
    main()
