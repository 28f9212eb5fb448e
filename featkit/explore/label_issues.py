"""Likely mislabelled images: confident learning (Northcutt et al., 2021) through cleanlab.

1. **Candidates.** The labelled rows of the task as :meth:`Embeddings.task` gives them (on a
   ``finetuned-<run>`` variant only images the trunk never trained on). Classes too small
   for the folds are left out exactly as ``featkit fit`` leaves them out
   (:func:`featkit.data.splits.rare_classes`: fewer groups, or rows, than folds): their
   images are not judged and the class is never suggested; the report names each class
   and why (``left_out``).
2. **Out-of-fold probabilities** from :func:`featkit.evaluate.out_of_fold_proba`: every
   image is scored by a head that never saw it nor another photo of its group (folds are
   group-aware), with C tuned inside each training fold for the log-likelihood of the
   held-out labels (fit tunes for balanced accuracy, which on imbalanced tasks picks weakly
   regularised, overconfident heads), and no class weights (they skew the probabilities
   confident learning reads; measured at :class:`LabelIssueSettings`).
3. **How many are flagged** is confident learning's count: per-class thresholds ``t_j`` (the
   mean probability of class ``j`` over the images labelled ``j``) put an image in cell
   (given ``i``, confident ``j``) of the *confident joint* when ``p_j >= t_j`` (the most
   probable such ``j``); the off-diagonal count N (``cleanlab.count.num_label_issues``)
   is the estimated number of label errors, N / n the estimated noise rate.
4. **Which are flagged, in what order**: the N images with the lowest score, lowest first.
   The score is the *self-confidence* ``p(given label)`` (``rank_by="margin"``: the
   normalised margin ``p(given) - max p(other)``). Measured with 5 % of labels flipped on
   purpose (``benchmarks/bench_label_issues.py``; MobileNetV2 features, logreg, C by inner
   CV on the held-out labels' log-likelihood): on porcelain ``dynasty`` 90 % of the flagged
   images were flips and 81 % of the flips were flagged, where the confident joint's own
   off-diagonal set (what this module flagged before) scored 77 % / 70 %; on clothing
   ``kids`` 68 % / 65 %. Self-confidence ranked the flips higher than the margin:
   precision@k (k = the flips) 0.86 vs 0.81 on porcelain ``dynasty`` and 0.65 vs 0.45 on
   the 19 clothing garment classes; on two classes the two rank alike.
5. **The suggestion** is the most probable other class, with its probability.

Multi-task: :func:`label_pair_conflicts` lists images whose labels for two tasks form a
pair (``Body`` with ``kids=False``) that almost no image outside their group carries,
although both labels are common — the tasks disagree, so one of the two is likely wrong.
No model is involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.data.corrections import corrections_report
from featkit.embeddings import Embeddings, TaskData, group_codes, resolve_tasks
from featkit.errors import FeatkitError, choices_message
from featkit.explore.plots import gallery_png
from featkit.paths import EXPLORE_ELSEWHERE, new_file, slug

RANK_BY = ("self_confidence", "margin")
_CLEANLAB_SCORE = {"self_confidence": "self_confidence", "margin": "normalized_margin"}


@dataclass(frozen=True)
class LabelIssueSettings:
    clf: str = "logreg"  # a head from featkit's head registry
    cv: int = 5
    C: float | None = None  # fix the head's C (faster); None: chosen by inner CV in each training fold
    # No class weights: confident learning reads the probabilities as the label distribution, and weighting
    # classes by inverse frequency skews them. With 5 % of clothing `kids` (9 % True) flipped, the flagged set
    # went from precision 0.16 / recall 0.74 (fit's "auto" = class_weight) to 0.68 / 0.65, precision@k from
    # 0.34 to 0.66; balanced porcelain `dynasty` is the same either way.
    rebalance: str = "none"
    rank_by: str = "self_confidence"
    seed: int = 0
    top: int = 40  # images in the gallery
    gallery: bool = True
    columns: int = 8

    def validate(self) -> None:
        if self.rank_by not in RANK_BY:
            raise FeatkitError(choices_message("ranking", self.rank_by, RANK_BY))
        if self.cv < 2:
            raise FeatkitError(f"cv must be at least 2 folds, got {self.cv}")
        if self.C is not None and self.C <= 0:
            raise FeatkitError(f"C must be positive, got {self.C}")
        if self.top < 1:
            raise FeatkitError(f"top must be at least 1, got {self.top}")


@dataclass
class LabelIssues:
    """Confident-learning output for ``n`` images of one task."""

    classes: list[str]
    thresholds: np.ndarray  # (K,) per-class self-confidence thresholds
    confident_joint: np.ndarray  # (K, K) given x confident label counts
    issues: pd.DataFrame  # ranked: position, given, self_confidence, suggested, suggested_confidence, margin
    n: int
    scores: np.ndarray  # (n,) the ranking score of every judged image (lower: more likely mislabelled)
    rank_by: str = "self_confidence"
    proba_source: str = ""

    @property
    def noise_rate(self) -> float:
        """Confident learning's estimate of the share of wrong labels (the flagged share)."""
        return len(self.issues) / self.n if self.n else 0.0


@dataclass
class LabelIssueReport:
    key: str
    task: str
    result: LabelIssues
    frame: pd.DataFrame  # issues with ids and paths
    left_out: dict = field(default_factory=dict)  # class -> why it is neither judged nor suggested
    rows: dict = field(default_factory=dict)  # the task's row counts (labelled, unknown, dropped_rare, used ...)
    corrections: dict = field(default_factory=dict)  # how many labels corrections.csv changed (corrections_report)
    csv: Path | None = None
    gallery: Path | None = None

    def to_dict(self) -> dict:
        r = self.result
        return {"key": self.key, "task": self.task, "n": r.n, "issues": len(self.frame),
                "estimated_noise_rate": round(r.noise_rate, 4), "rank_by": r.rank_by, "proba_source": r.proba_source,
                "left_out_classes": self.left_out, "rows": self.rows, "corrections": self.corrections,
                "classes": r.classes, "thresholds": [round(float(t), 4) for t in r.thresholds],
                "confident_joint": r.confident_joint.tolist(), "csv": str(self.csv) if self.csv else None,
                "gallery": str(self.gallery) if self.gallery else None,
                "label_issues": self.frame.to_dict(orient="records")}


def confident_learning(proba: np.ndarray, given: np.ndarray, classes, *, rank_by: str = "self_confidence") -> LabelIssues:
    """Label issues from out-of-fold ``proba`` (n, K) and ``given`` labels (class names); see the module docstring."""
    from cleanlab.count import compute_confident_joint, get_confident_thresholds, num_label_issues
    from cleanlab.rank import get_label_quality_scores

    if rank_by not in RANK_BY:
        raise FeatkitError(choices_message("ranking", rank_by, RANK_BY))
    classes = [str(c) for c in classes]
    proba = np.asarray(proba, dtype=np.float64)
    where = {c: k for k, c in enumerate(classes)}
    unknown = sorted({str(v) for v in given} - set(where))
    if unknown:
        raise FeatkitError(f"label(s) {', '.join(map(repr, unknown))} are not among the classes "
                           f"{', '.join(classes)} of the probabilities")
    g = np.array([where[str(v)] for v in given], dtype=np.int64)
    n = len(g)
    rows = np.arange(n)
    score = get_label_quality_scores(g, proba, method=_CLEANLAB_SCORE[rank_by])
    flagged = np.lexsort((rows, score))[:num_label_issues(g, proba)]
    others = proba.copy()
    others[rows, g] = -np.inf
    suggested = others.argmax(axis=1)
    self_conf = proba[rows, g]
    issues = pd.DataFrame({
        "position": flagged,
        "given": [classes[i] for i in g[flagged]],
        "self_confidence": np.round(self_conf[flagged], 4),
        "suggested": [classes[i] for i in suggested[flagged]],
        "suggested_confidence": np.round(proba[flagged, suggested[flagged]], 4),
        "margin": np.round(self_conf[flagged] - proba[flagged, suggested[flagged]], 4),
    })
    issues.insert(0, "rank", np.arange(1, len(issues) + 1))
    return LabelIssues(classes=classes, thresholds=get_confident_thresholds(g, proba),
                       confident_joint=compute_confident_joint(g, proba, calibrate=False), issues=issues, n=n,
                       scores=score, rank_by=rank_by)


def learnable(data: TaskData, cv: int) -> tuple[TaskData, dict[str, str]]:
    """``data`` without the classes ``fit`` would leave out for ``cv`` out-of-fold folds, and why each went."""
    from featkit.data.splits import rare_classes
    from featkit.evaluate import EvalSettings

    mode = "group" if data.groups is not None else "stratified"  # the folds out_of_fold_proba makes
    rare = rare_classes(data.y, groups=data.groups, splits_mode=mode, cv=cv, inner_cv=EvalSettings().inner_cv)
    keep = ~np.isin(data.y, list(rare))
    remaining = sorted(set(data.y[keep].tolist()))
    if len(remaining) < 2:
        why = "; ".join(f"{c!r}: {r}" for c, r in rare.items())
        raise FeatkitError(f"task {data.task!r}: after leaving out classes too small for {cv} folds ({why}) "
                           f"{len(remaining)} class(es) remain; a classifier needs two — use a smaller --cv")
    return (data.subset(keep, dropped_rare=int((~keep).sum())) if rare else data), rare


def out_of_fold(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None,
                settings: LabelIssueSettings) -> tuple[np.ndarray, list[str], str]:
    """``(proba, classes, source)``: featkit's group-aware out-of-fold probabilities."""
    from featkit.evaluate import out_of_fold_proba

    params = {"C": (settings.C,)} if settings.C is not None else None
    proba, classes = out_of_fold_proba(X, y.astype(object), groups, clf=settings.clf, cv=settings.cv,
                                       seed=settings.seed, params=params, rebalance=settings.rebalance,
                                       tune_by="log_likelihood")
    tuned = f"C={settings.C}" if settings.C is not None else "C by inner CV on the held-out labels' log-likelihood"
    return proba, list(classes), (f"featkit.evaluate.out_of_fold_proba ({settings.clf}, {settings.cv} folds, {tuned}, "
                                  f"rebalance {settings.rebalance})")


def find_label_issues(emb: Embeddings, task: str, *, settings: LabelIssueSettings = LabelIssueSettings(),
                      out: Path | None = None) -> LabelIssueReport:
    """Ranked likely-mislabelled images of ``task`` with the given and suggested label; CSV and gallery written."""
    settings.validate()
    data, left_out = learnable(emb.task(task), settings.cv)
    proba, classes, source = out_of_fold(data.X, data.y, data.groups, settings)
    result = confident_learning(proba, data.y, classes, rank_by=settings.rank_by)
    result.proba_source = source
    pos = result.issues["position"].to_numpy()
    frame = result.issues.drop(columns="position")
    frame.insert(1, "id", data.ids[pos].astype(str))
    frame.insert(2, "path", [str(p) for p in emb.paths(data.index[pos])])
    out = Path(out) if out else emb.explore_dir
    report = LabelIssueReport(key=emb.key, task=task, result=result, frame=frame, left_out=left_out,
                              rows=dict(data.counts), csv=out / f"label_issues_{slug(task)}.csv",
                              corrections=corrections_report(emb.manifest.corrections, [task]))
    with new_file(report.csv, fix=EXPLORE_ELSEWHERE) as tmp:
        frame.to_csv(tmp, index=False)
    if settings.gallery and len(frame):
        top = frame.head(settings.top)
        captions = [f"#{r.rank} {Path(r.id).name[:20]}\ngiven {r.given[:16]} {_p(r.self_confidence)}\n"
                    f"→ {r.suggested[:16]} {_p(r.suggested_confidence)}" for r in top.itertuples(index=False)]
        score = "p(given)" if settings.rank_by == "self_confidence" else "margin"
        report.gallery = gallery_png(top["path"].tolist(), captions, out / f"label_issues_{slug(task)}.png",
                                     title=f"{emb.key} — {task}: top {len(top)} of {len(frame)} likely label issues "
                                           f"(lowest {score} first); given label → suggested, with probabilities",
                                     columns=settings.columns)
    return report


def _p(value: float) -> str:
    return f"{value:.2f}" if value >= 0.01 else "<0.01"


# -- how well it works on a collection: labels flipped on purpose ------------------------------------------------
def flip_labels(y: np.ndarray, rate: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(flipped y, positions)``: ``round(rate * n)`` labels moved to another class chosen uniformly at random."""
    if not 0 < rate < 1:
        raise FeatkitError(f"rate must be between 0 and 1, got {rate}")
    rng = np.random.default_rng(seed)
    classes = sorted(set(y.tolist()))
    positions = np.sort(rng.choice(len(y), size=round(rate * len(y)), replace=False))
    out = np.asarray(y, dtype=object).copy()
    for i in positions:
        out[i] = rng.choice([c for c in classes if c != y[i]])
    return out, positions


@dataclass
class PlantedNoise:
    """Label issues found after flipping labels on purpose, against the flips."""

    task: str
    ids: np.ndarray  # the judged images
    true: np.ndarray  # their labels before flipping
    given: np.ndarray  # after flipping: what the head and confident learning saw
    flipped: np.ndarray  # (n,) bool
    proba: np.ndarray  # out-of-fold probabilities on the flipped labels
    result: LabelIssues
    left_out: dict

    def summary(self) -> dict:
        flagged = np.zeros(len(self.ids), bool)
        flagged[self.result.issues["position"].to_numpy()] = True
        k = int(self.flipped.sum())
        top_k = np.lexsort((np.arange(len(self.ids)), self.result.scores))[:k]
        found = self.result.issues[self.flipped[self.result.issues["position"].to_numpy()]]
        right = (found["suggested"].to_numpy() == self.true[found["position"].to_numpy()]).mean() if len(found) else 0.0
        tp = int((flagged & self.flipped).sum())
        return {"task": self.task, "n": len(self.ids), "classes": len(self.result.classes), "flips": k,
                "flagged": int(flagged.sum()), "precision": round(tp / max(flagged.sum(), 1), 3),
                "recall": round(tp / max(k, 1), 3), "precision_at_k": round(float(self.flipped[top_k].mean()), 3),
                "suggested_true": round(float(right), 3), "left_out": self.left_out}


def planted_noise(emb: Embeddings, task: str, *, rate: float = 0.05, seed: int = 0,
                  settings: LabelIssueSettings = LabelIssueSettings()) -> PlantedNoise:
    """Flip ``rate`` of the task's learnable labels (:func:`flip_labels`), then find label issues as
    :func:`find_label_issues` does: how much of what it flags was planted, and how much of the planted it flags."""
    settings.validate()
    data, left_out = learnable(emb.task(task), settings.cv)
    y, positions = flip_labels(data.y, rate, seed=seed)
    proba, classes, source = out_of_fold(data.X, y, data.groups, settings)
    result = confident_learning(proba, y, classes, rank_by=settings.rank_by)
    result.proba_source = source
    flipped = np.zeros(len(y), bool)
    flipped[positions] = True
    return PlantedNoise(task=task, ids=data.ids, true=data.y, given=y, flipped=flipped, proba=proba, result=result,
                        left_out=left_out)


# -- multi-task: label pairs the rest of the collection never shows --------------------------------------------
@dataclass(frozen=True)
class PairSettings:
    # A pair is a conflict when at most this many images outside the image's own group carry it ...
    max_support: int = 1
    # ... although, were the two tasks independent, at least this many would be expected (so a pair is only
    # suspicious when both of its labels are common; a rare label alone is not a conflict).
    min_expected: float = 5.0

    def validate(self) -> None:
        if self.max_support < 0:
            raise FeatkitError(f"max_support must be 0 or more, got {self.max_support}")
        if self.min_expected <= 0:
            raise FeatkitError(f"min_expected must be positive, got {self.min_expected}")


@dataclass
class LabelPairReport:
    key: str
    tasks: tuple[str, ...]
    frame: pd.DataFrame  # one row per (image, task pair) conflict, most surprising first
    csv: Path | None = None

    def to_dict(self) -> dict:
        return {"key": self.key, "tasks": list(self.tasks), "conflicts": len(self.frame),
                "csv": str(self.csv) if self.csv else None, "label_pairs": self.frame.to_dict(orient="records")}


def pair_conflicts(a: np.ndarray, b: np.ndarray, codes: np.ndarray, *,
                   settings: PairSettings = PairSettings()) -> pd.DataFrame:
    """Rows whose (``a``, ``b``) label pair is (almost) never seen outside their group; labels ``None`` are skipped.

    Columns: position, support (images outside the row's group with the same pair), expected (images with that
    pair were the two tasks independent: ``n_a * n_b / n``), usual_b (the commonest ``b`` label among images
    labelled ``a``) and usual_a.
    """
    known = np.array([x is not None and y is not None for x, y in zip(a, b)], dtype=bool)
    rows = np.flatnonzero(known)
    frame = pd.DataFrame({"position": rows, "a": a[rows].astype(str), "b": b[rows].astype(str), "group": codes[rows]})
    n = len(frame)
    pair_n = frame.groupby(["a", "b"])["position"].transform("size")
    in_group = frame.groupby(["a", "b", "group"])["position"].transform("size")
    frame["support"] = pair_n - in_group
    frame["expected"] = (frame.groupby("a")["position"].transform("size")
                         * frame.groupby("b")["position"].transform("size") / max(n, 1))
    usual_b = frame.groupby("a")["b"].agg(lambda s: s.value_counts().index[0])
    usual_a = frame.groupby("b")["a"].agg(lambda s: s.value_counts().index[0])
    frame["usual_b"], frame["usual_a"] = frame["a"].map(usual_b), frame["b"].map(usual_a)
    hit = (frame["support"] <= settings.max_support) & (frame["expected"] >= settings.min_expected)
    frame = frame[hit].drop(columns="group")
    frame["expected"] = frame["expected"].round(2)
    return frame.sort_values(["support", "expected", "position"], ascending=[True, False, True], kind="stable")


def label_pair_conflicts(emb: Embeddings, tasks=None, *, settings: PairSettings = PairSettings(),
                         out: Path | None = None) -> LabelPairReport:
    """Images whose labels for two tasks form a pair the rest of the collection (almost) never shows; CSV written."""
    settings.validate()
    tasks = resolve_tasks(emb.manifest, tasks)
    if len(tasks) < 2:
        raise FeatkitError(f"label pairs need at least two tasks; this collection has {', '.join(tasks)}")
    codes = group_codes(emb.groups, len(emb))
    parts = []
    for ta, tb in combinations(tasks, 2):
        found = pair_conflicts(emb.labels(ta), emb.labels(tb), codes, settings=settings)
        pos = found.pop("position").to_numpy()
        parts.append(pd.DataFrame({
            "id": emb.ids[pos].astype(str), "path": [str(p) for p in emb.paths(pos)],
            "task_a": ta, "label_a": found["a"].to_numpy(), "task_b": tb, "label_b": found["b"].to_numpy(),
            "support": found["support"].to_numpy(), "expected": found["expected"].to_numpy(),
            "usual_b_for_a": found["usual_b"].to_numpy(), "usual_a_for_b": found["usual_a"].to_numpy()}))
    frame = pd.concat(parts, ignore_index=True).sort_values(["support", "expected"], ascending=[True, False],
                                                            kind="stable").reset_index(drop=True)
    out = Path(out) if out else emb.explore_dir
    report = LabelPairReport(key=emb.key, tasks=tuple(tasks), frame=frame, csv=out / "label_pairs.csv")
    with new_file(report.csv, fix=EXPLORE_ELSEWHERE) as tmp:
        frame.to_csv(tmp, index=False)
    return report
