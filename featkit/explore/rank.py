"""Rank cached backbones per task without training a head: LogME.

LogME (You, Liu, Wang, Long: "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021) scores features ``F`` (n x D) for labels by the log
marginal likelihood (evidence) of Bayesian linear regression of each one-hot label
column ``y`` on ``F``::

    w ~ N(0, α⁻¹ I),   y | F, w ~ N(F w, β⁻¹ I)
    A = α I + β FᵀF,   m = β A⁻¹ Fᵀ y
    log p(y | F, α, β) = D/2 log α + n/2 log β − n/2 log 2π
                         − β/2 ‖F m − y‖² − α/2 ‖m‖² − 1/2 log |A|

α and β are set to maximise the evidence by MacKay's fixed point:
``γ = Σ βσᵢ / (α + βσᵢ)``, ``α ← γ / ‖m‖²``, ``β ← (n − γ) / ‖F m − y‖²``, with σᵢ
the eigenvalues of FᵀF. Everything is computed in the eigenbasis of FᵀF (or of FFᵀ
when n < D), so each iteration costs O(min(n, D)). The score is the evidence divided
by n, averaged over classes: higher means the features make the labels more linearly
predictable. It is compared with the balanced accuracy of a fitted probe when a run
of ``featkit fit`` exists (``runs/*/report.json``), with Spearman and Kendall rank
agreement across backbones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featkit.embeddings import Embeddings, iter_tasks, names_tasks, resolve_tasks
from featkit.errors import FeatkitError

_LOG_2PI = math.log(2 * math.pi)


def _spectrum(F: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Eigenvalues σ of FᵀF (the non-trivial ones), Q = Vᵀ Fᵀ Y in that basis, and how many σ are 0."""
    n, D = F.shape
    if n >= D:
        sigma, V = np.linalg.eigh(F.T @ F)
        Q = V.T @ (F.T @ Y)
        zeros = 0
    else:  # FFᵀ shares the non-zero spectrum; vᵢᵀFᵀy = sᵢ uᵢᵀ y with sᵢ = √σᵢ
        sigma, U = np.linalg.eigh(F @ F.T)
        sigma = np.clip(sigma, 0.0, None)
        Q = (U.T @ Y) * np.sqrt(sigma)[:, None]
        zeros = D - n
    return np.clip(sigma, 0.0, None), Q, zeros


def _evidence_terms(sigma: np.ndarray, q: np.ndarray, yy: float, alpha: float, beta: float):
    """(m·m, ‖Fm − y‖², γ) for the posterior mean m at (α, β), all in the eigenbasis."""
    denom = alpha + beta * sigma
    mt = beta * q / denom
    mm = float(mt @ mt)
    residual = float(max(yy - 2.0 * (mt @ q) + (sigma * mt) @ mt, 0.0))
    gamma = float((beta * sigma / denom).sum())
    return mm, residual, gamma


def log_evidence(sigma: np.ndarray, q: np.ndarray, yy: float, *, n: int, D: int, zeros: int,
                 alpha: float, beta: float) -> float:
    """log p(y | F, α, β) from the spectrum (see the module docstring)."""
    mm, residual, _ = _evidence_terms(sigma, q, yy, alpha, beta)
    log_det = float(np.log(alpha + beta * sigma).sum()) + zeros * math.log(alpha)
    return (D / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * _LOG_2PI
            - beta / 2 * residual - alpha / 2 * mm - log_det / 2)


def maximise_evidence(sigma: np.ndarray, q: np.ndarray, yy: float, *, n: int, max_iter: int = 100,
                      tol: float = 1e-6) -> tuple[float, float]:
    """(α, β) at the evidence maximum, by MacKay's fixed-point updates."""
    alpha, beta = 1.0, 1.0
    tiny = 1e-12
    for _ in range(max_iter):
        mm, residual, gamma = _evidence_terms(sigma, q, yy, alpha, beta)
        new_alpha = max(gamma, tiny) / max(mm, tiny)
        new_beta = max(n - gamma, tiny) / max(residual, tiny)
        done = abs(new_alpha / new_beta - alpha / beta) <= tol * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return alpha, beta


def logme(X: np.ndarray, y) -> float:
    """LogME of features ``X`` (n, D) for class labels ``y``: mean over classes of evidence / n."""
    F = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(str)
    if F.ndim != 2 or len(F) != len(y):
        raise FeatkitError(f"features {F.shape} and labels ({len(y)},) do not line up")
    classes = np.unique(y)
    if len(classes) < 2:
        raise FeatkitError(f"LogME needs at least two classes, got {[str(c) for c in classes]}")
    n, D = F.shape
    Y = (y[:, None] == classes[None, :]).astype(np.float64)
    sigma, Q, zeros = _spectrum(F, Y)
    scores = []
    for k in range(len(classes)):
        yy = float(Y[:, k] @ Y[:, k])
        alpha, beta = maximise_evidence(sigma, Q[:, k], yy, n=n)
        scores.append(log_evidence(sigma, Q[:, k], yy, n=n, D=D, zeros=zeros, alpha=alpha, beta=beta) / n)
    return float(np.mean(scores))


# -- probe results from `featkit fit` runs --------------------------------------------------
def _run_entries(report: dict) -> list[tuple[str, str, float, str]]:
    """(key, task, balanced accuracy, head) in one ``featkit fit`` report.json (or a multi-task one)."""
    store = report.get("store") if isinstance(report.get("store"), dict) else {}
    key = store.get("key") or report.get("key")
    if not key and report.get("backbone") and report.get("variant"):
        key = f"{report['backbone']}/{report['variant']}"
    head = str(report.get("clf") or "")
    entries = []
    if report.get("task") and isinstance(report.get("metrics"), dict):
        entries.append((report["task"], report["metrics"]))
    tasks = report.get("tasks") if isinstance(report.get("tasks"), dict) else {}
    for task, block in tasks.items():
        if isinstance(block, dict) and isinstance(block.get("metrics"), dict):
            entries.append((task, block["metrics"]))
    return [(str(key), str(task), float(m["balanced_accuracy"]), head)
            for task, m in entries if key and m.get("balanced_accuracy") is not None]


def probe_results(runs_dir: Path) -> dict[tuple[str, str], dict]:
    """``{(key, task): {"balanced_accuracy", "run", "head"}}`` from the run folders' ``report.json``.

    Reads ``runs_dir/*/report.json`` and one level deeper (a multi-task run keeps one
    folder per task). With several runs for one key and task, a logistic-regression
    probe is preferred, then the most recent run.
    """
    found: dict[tuple[str, str], dict] = {}
    runs_dir = Path(runs_dir)
    paths = [*runs_dir.glob("*/report.json"), *runs_dir.glob("*/*/report.json")]
    for path in sorted(paths, key=lambda p: p.stat().st_mtime):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a run being written, or not a featkit report
        for key, task, bal, head in _run_entries(report):
            current = found.get((key, task))
            if current is not None and current["head"] == "logreg" and head != "logreg":
                continue
            found[(key, task)] = {"balanced_accuracy": bal, "run": str(path.parent.relative_to(runs_dir)),
                                  "head": head}
    return found


@dataclass
class RankReport:
    rows: list[dict] = field(default_factory=list)  # key, task, logme, probe_balanced_accuracy, run, ranks
    agreement: list[dict] = field(default_factory=list)  # task, n, spearman, kendall
    skipped: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "agreement": self.agreement, "skipped": self.skipped}


def _agreement(task: str, rows: list[dict]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    both = [r for r in rows if r["probe_balanced_accuracy"] is not None]
    out = {"task": task, "n": len(both), "spearman": None, "kendall": None}
    if len(both) >= 2:
        a = [r["logme"] for r in both]
        b = [r["probe_balanced_accuracy"] for r in both]
        if len(set(a)) > 1 and len(set(b)) > 1:
            out["spearman"] = round(float(spearmanr(a, b).statistic), 4)
            out["kendall"] = round(float(kendalltau(a, b).statistic), 4)
    return out


def rank_backbones(embs: list[Embeddings], *, tasks=None, runs_dir: Path | None = None) -> RankReport:
    """LogME of every store group of ``embs`` for every task, beside the probe's balanced accuracy.

    Probe results are read from the fit runs in ``runs_dir`` (default: the collection's runs folder).
    """
    if not embs:
        raise FeatkitError("nothing to rank: no cached embeddings were given")
    strict = names_tasks(tasks)
    tasks = resolve_tasks(embs[0].manifest, tasks)
    config = embs[0].manifest.config
    probes = probe_results(runs_dir or config.runs_dir) if (runs_dir or config) else {}
    report = RankReport()
    by_task: dict[str, list[dict]] = {t: [] for t in tasks}
    for emb in embs:
        for data in iter_tasks(emb, tasks, strict=strict, skipped=report.skipped):
            probe = probes.get((emb.key, data.task), {})
            by_task[data.task].append({
                "key": emb.key, "task": data.task, "n": len(data.y), "logme": round(logme(data.X, data.y), 5),
                "probe_balanced_accuracy": probe.get("balanced_accuracy"), "run": probe.get("run"),
                "head": probe.get("head")})
    for task, rows in by_task.items():
        rows.sort(key=lambda r: -r["logme"])
        probe_order = sorted((r for r in rows if r["probe_balanced_accuracy"] is not None),
                             key=lambda r: -r["probe_balanced_accuracy"])
        for i, row in enumerate(rows):
            row["rank_logme"] = i + 1
            row["rank_probe"] = probe_order.index(row) + 1 if row in probe_order else None
        report.rows.extend(rows)
        if rows:
            report.agreement.append(_agreement(task, rows))
    return report
