"""Run reports: the readable report, confusion-matrix and reliability PNGs of one run, and the runs table.

``collect_runs`` reads every fit run's ``report.json`` under the runs folder and every
fine-tuning run's (``runs/finetune/<run>/report.json``, one row per task) into rows
(task × head × backbone/variant × rebalance) and marks the best run per task by
balanced accuracy; ``write_runs_csv`` saves them. Plotting uses matplotlib's Agg canvas
directly (no pyplot, no display).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from featkit.errors import FeatkitError
from featkit.paths import RUNS_ELSEWHERE, new_file

RUN_COLUMNS = ("run", "task", "clf", "backbone", "variant", "rebalance", "pca", "split", "n_test", "accuracy",
               "balanced_accuracy", "macro_f1", "ece", "review_threshold", "fit_seconds", "best")


def title(report: dict) -> str:
    """``task · head · backbone/variant``: every run's title names its variant."""
    return f"{report['task']} · {report['clf']} · {report['backbone']}/{report['variant']}"


def plot_confusion(report: dict, path: Path) -> Path:
    """Row-normalised confusion matrix with counts, titled with the run's key numbers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = report["confusion_matrix"]["labels"]
    matrix = np.asarray(report["confusion_matrix"]["matrix"], dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = max(4.0, 0.45 * n + 2.5)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    m = report["metrics"]
    ax.set_title(f"{title(report)}\n"
                 f"balanced acc {m['balanced_accuracy']:.3f} · macro-F1 {m['macro_f1']:.3f} · "
                 f"acc {m['accuracy']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_reliability(report: dict, path: Path) -> Path:
    """Reliability diagram of the out-of-fold predictions before and after calibration, with the review threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cal = report["calibration"]
    fig = Figure(figsize=(9.5, 4.4))
    FigureCanvasAgg(fig)
    ax, hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for name, colour in (("before", "tab:orange"), ("after", "tab:blue")):
        bins = cal["reliability"][name]
        ece = cal[f"ece_{name}"]
        label = f"{'before' if name == 'before' else 'after'} ({cal['base'] if name == 'before' else cal['chosen']}): " \
                f"ECE {ece:.3f}"
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=colour, ms=4,
                label=label)
    threshold = report["review"]["threshold"]
    for axis in (ax, hist):
        if threshold is not None:
            axis.axvline(threshold, color="tab:red", ls="--", lw=1,
                         label=f"review below {threshold:.2f} (precision ≥ {report['review']['min_precision']:g})"
                         if axis is ax else None)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy of the predictions in the bin")
    ax.legend(fontsize=7, loc="upper left")
    after = cal["reliability"]["after"]
    hist.bar([(b["low"] + b["high"]) / 2 for b in after], [b["n"] for b in after],
             width=[b["high"] - b["low"] for b in after], color="tab:blue", alpha=0.7)
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence (after calibration)")
    hist.set_ylabel("predictions")
    fig.suptitle(f"{title(report)}: out-of-fold calibration", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _corrections_line(corrections: dict) -> str:
    if corrections.get("ignored"):
        return "as labels.csv gives them (corrections.csv ignored)"
    if not corrections.get("applied"):
        return "as labels.csv gives them (no correction for this task)"
    return f"{corrections['applied']} of this task corrected by {corrections['file']}"


def render_markdown(report: dict) -> str:
    """``report.md``: a run for people."""
    m = report["metrics"]
    lines = [
        f"# {title(report)}",
        "",
        f"- run: `{report['run']}` (featkit {report['featkit_version']}, {report['created']})",
        f"- split: {report['split']['description']}",
        f"- rebalance: {report['rebalance']['used']} (asked {report['rebalance']['requested']}: "
        f"{report['rebalance']['reason']})",
        f"- pca: {report['pca']['used'] or 'none'} ({report['pca']['reason']})",
        f"- rows: {report['rows']['used']} used, {report['rows']['unknown']} unknown label, "
        f"{report['rows']['missing_features']} without features"
        + (f", {report['rows']['excluded_trunk_training']} left out (the fine-tuned trunk trained on them)"
           if report["rows"].get("excluded_trunk_training") else "")
        + f"; train ≈ {report['n_train']} per fold, {report['n_test']} evaluated",
        f"- fit {report['fit_seconds']:.2f} s (all folds, their searches and the final refit), "
        f"predict {report['predict_ms_per_image']:.3f} ms/image",
        f"- labels: {_corrections_line(report.get('corrections') or {})}",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| balanced accuracy | {m['balanced_accuracy']:.4f} (chance {m['chance_balanced_accuracy']:.4f}) |",
        f"| macro-F1 | {m['macro_f1']:.4f} |",
        f"| accuracy | {m['accuracy']:.4f} |",
    ]
    if "balanced_accuracy_std" in m:
        lines.append(f"| balanced accuracy, std over folds | {m['balanced_accuracy_std']:.4f} |")
    lines.append(f"| expected calibration error | {m['ece']:.4f} (before calibration "
                 f"{report['calibration']['ece_before']:.4f}) |")
    lines += _calibration_lines(report)
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for label, row in report["per_class"].items():
        lines.append(f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    labels = report["confusion_matrix"]["labels"]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| true \\ predicted | " + " | ".join(labels) + " |", "| --- " * (len(labels) + 1) + "|"]
    for label, row in zip(labels, report["confusion_matrix"]["matrix"]):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Hyperparameters", ""]
    for name, entry in report["hyperparameters"].items():
        lines.append(f"- **{name}**: {entry['why']}")
    lines.append("")
    for fold in report["folds"]:
        lines.append(f"- fold {fold['fold'] + 1}: {fold['params']} — {fold['tuning']['method']}; calibration "
                     f"{fold['calibration']['method']}; balanced accuracy {fold['balanced_accuracy']:.4f}")
    if report.get("model"):
        model = report["model"]
        lines.append(f"- saved model: refit on {model['trained_on']} rows with {model['params']} "
                     f"({model['tuning']['method']}); calibration {model['calibration']['why']}")
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def _calibration_lines(report: dict) -> list[str]:
    cal, review = report["calibration"], report["review"]
    lines = ["", "## Calibration and review", "",
             f"- calibration: {cal['chosen']}; {cal['how']}. Out-of-fold ECE: before ({cal['base']}) "
             f"{cal['ece_before']:.4f}, after {cal['ece_after']:.4f}; each method on every fold: "
             + ", ".join(f"{k} {v:.4f}" for k, v in cal["ece_by_method"].items()) + " (`reliability.png`)"]
    if review["threshold"] is None:
        lines.append(f"- review: no confidence reaches precision {review['min_precision']:g} on the out-of-fold "
                     "predictions; every prediction needs review")
    else:
        lines.append(f"- review threshold **{review['threshold']:.4f}**: predictions at or above it are right "
                     f"{review['precision_kept']:.1%} of the time (target {review['min_precision']:g}); "
                     f"{review['kept']} of {review['n']} out-of-fold predictions kept, {review['sent_to_review']} "
                     "sent to review")
    lines += ["", "| min precision | threshold | kept | coverage | precision kept |", "| --- | --- | --- | --- | --- |"]
    for row in report["review_table"]:
        lines.append(f"| {row['min_precision']:g} | "
                     + (f"{row['threshold']:.4f} | {row['kept']} | {row['coverage']:.1%} | {row['precision_kept']:.3f} |"
                        if row["threshold"] is not None else "not reached | 0 | 0% | – |"))
    lines += ["", "Risk–coverage (out of fold): as the confidence threshold rises, fewer predictions are kept and "
              "more of them are right.", "", "| confidence ≥ | kept | coverage | precision |",
              "| --- | --- | --- | --- |"]
    for row in report["risk_coverage"]:
        precision = "–" if row["precision"] is None else f"{row['precision']:.3f}"
        lines.append(f"| {row['threshold']:g} | {row['kept']} | {row['coverage']:.1%} | {precision} |")
    return lines


def write_run(run_dir: Path, report: dict, predictions: pd.DataFrame, *, plot: bool,
              extra_files: list[str] = ()) -> None:
    """A fit run's files: report.json (written last, atomically), report.md, predictions.csv, the PNGs."""
    files = ["report.json", "report.md", "predictions.csv"]
    if plot:
        plot_confusion(report, run_dir / "confusion_matrix.png")
        plot_reliability(report, run_dir / "reliability.png")
        files += ["confusion_matrix.png", "reliability.png"]
    report["files"] = files + list(extra_files)
    predictions.to_csv(run_dir / "predictions.csv", index=False, float_format="%.5f")
    (run_dir / "report.md").write_text(render_markdown(report))
    with new_file(run_dir / "report.json", fix=RUNS_ELSEWHERE) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))


def _row(report: dict, run: str) -> dict:
    m = report.get("metrics") or {}
    return {
        "run": run,
        "task": report.get("task"),
        "clf": report.get("clf"),
        "backbone": report.get("backbone"),
        "variant": report.get("variant"),
        "rebalance": (report.get("rebalance") or {}).get("used"),
        "pca": (report.get("pca") or {}).get("used"),
        "split": (report.get("split") or {}).get("mode"),
        "n_test": report.get("n_test"),
        "accuracy": m.get("accuracy"),
        "balanced_accuracy": m.get("balanced_accuracy"),
        "macro_f1": m.get("macro_f1"),
        "ece": m.get("ece"),
        "review_threshold": (report.get("review") or {}).get("threshold"),
        "fit_seconds": report.get("fit_seconds"),
        "best": False,
    }


def _rows_of(report: dict, path: Path, runs_dir: Path) -> list[dict]:
    """A fit run's row, or one row per task of a fine-tuning run (its report holds a ``tasks`` list)."""
    name = path.parent.relative_to(runs_dir).as_posix()
    if isinstance(report.get("tasks"), list):  # runs/finetune/<run>/report.json
        common = {"clf": "finetune", "backbone": report.get("backbone"), "variant": report.get("variant"),
                  "split": {"mode": "held-out test set"}, "fit_seconds": report.get("seconds_this_session")}
        return [_row({**task, **common}, name) for task in report["tasks"] if isinstance(task, dict) and "task" in task]
    if "task" in report and "metrics" in report:
        return [_row(report, name)]
    return []


def collect_runs(runs_dir: Path, *, task: str | None = None) -> list[dict]:
    """One row per fit run (and per task of each fine-tuning run) under ``runs_dir``; the best per task marked."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FeatkitError(f"no runs folder at {runs_dir}; run `featkit fit` first (or pass --runs)")
    rows = []
    for path in sorted(runs_dir.rglob("report.json")):
        try:
            report = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a run being written, or not featkit's
        if isinstance(report, dict):
            rows += [r for r in _rows_of(report, path, runs_dir) if task is None or r["task"] == task]
    if not rows:
        raise FeatkitError(f"no runs{f' for task {task!r}' if task else ''} under {runs_dir}; run `featkit fit` first")
    best: dict[str, dict] = {}
    for row in rows:
        score = row["balanced_accuracy"] if row["balanced_accuracy"] is not None else -1
        if row["task"] not in best or score > (best[row["task"]]["balanced_accuracy"] or -1):
            best[row["task"]] = row
    for row in best.values():
        row["best"] = row["balanced_accuracy"] is not None
    return sorted(rows, key=lambda r: (r["task"], -(r["balanced_accuracy"] or 0), r["run"]))


def write_runs_csv(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    with new_file(path, fix="pass --csv FILE to write elsewhere") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RUN_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def runs_report(runs_dir: Path, *, csv_path: Path | None = None, task: str | None = None) -> dict:
    """The runs table (``featkit report``): rows, and the CSV written beside the runs."""
    rows = collect_runs(runs_dir, task=task)
    out = write_runs_csv(rows, csv_path or Path(runs_dir) / "runs.csv")
    return {"runs_dir": str(runs_dir), "csv": str(out), "runs": rows}
