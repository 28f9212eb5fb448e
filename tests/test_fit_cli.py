"""`featkit fit` and `featkit report` on the extracted demo collection (real MobileNetV2 features)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from featkit.config import Config
from featkit_cli.main import app

runner = CliRunner()
REPORT_KEYS = {"task", "clf", "backbone", "variant", "rebalance", "metrics", "per_class", "confusion_matrix",
               "fit_seconds", "predict_seconds", "n_train", "n_test", "split", "featkit_version", "store"}


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_fit_exactly_as_written_from_the_collection_folder(demo_store, monkeypatch):
    config, key = demo_store
    monkeypatch.chdir(config.root)
    before = set((config.root / "runs").glob("glaze-lgbm-*")) if (config.root / "runs").exists() else set()
    result = invoke("fit", "--task", "glaze", "--clf", "lgbm")
    assert result.exit_code == 0, result.output
    (run,) = set((config.root / "runs").glob("glaze-lgbm-*")) - before
    assert {"report.json", "report.md", "confusion_matrix.png", "model.skops", "model.json",
            "predictions.csv"} <= {p.name for p in run.iterdir()}
    report = json.loads((run / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["task"] == "glaze" and report["clf"] == "lgbm" and f"{report['backbone']}/{report['variant']}" == key
    assert report["split"]["mode"] == "group" and report["split"]["group_column"] == "object_id"
    assert report["rebalance"]["requested"] == "auto" and report["rebalance"]["used"] == "class_weight"
    assert report["pca"]["used"] is not None  # 1280-d MobileNetV2 embeddings: PCA inside the lgbm pipeline
    assert report["store"]["weights_sha256"] and report["store"]["preprocess_fingerprint"]
    assert report["metrics"]["balanced_accuracy"] > 2 * report["metrics"]["chance_balanced_accuracy"]
    assert report["n_test"] == 80 and sum(r["support"] for r in report["per_class"].values()) == 80
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "balanced accuracy" in (run / "report.md").read_text()
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == 80 and set(preds["fold"]) == set(range(5))
    assert "balanced acc" in result.output
    # calibration and trust: ECE before/after, the diagram, risk-coverage, the review threshold
    assert (run / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cal = report["calibration"]
    assert report["metrics"]["ece"] == cal["ece_after"] and 0 <= cal["ece_after"] <= 1 and len(cal["folds"]) == 5
    coverage = report["risk_coverage"]
    assert coverage[0]["kept"] == 80 and [r["kept"] for r in coverage] == sorted((r["kept"] for r in coverage),
                                                                               reverse=True)
    review = report["review"]
    assert review["sent_to_review"] == int(preds["needs_review"].sum())
    if review["threshold"] is not None:  # the CSV keeps 5 decimals
        assert (preds["confidence"][preds["needs_review"]] <= review["threshold"] + 1e-5).all()
        assert (preds["confidence"][~preds["needs_review"]] >= review["threshold"] - 1e-5).all()
    # rounds: what each fold chose, what the saved model uses, why; the whole wall time; progress as plain lines
    rounds = report["hyperparameters"]["n_estimators"]
    assert rounds["folds"] == [f["params"]["n_estimators"] for f in report["folds"]]
    assert rounds["model"] == report["model"]["params"]["n_estimators"] and "early stopping" in rounds["why"]
    assert report["fit_seconds"] >= report["folds_seconds"] + report["model"]["fit_seconds"]
    assert "glaze lgbm: fold 1/5" in result.output and "glaze lgbm: refit on all 80 rows" in result.output
    text = (run / "report.md").read_text()
    assert "Risk–coverage" in text and "review threshold" in text and "## Hyperparameters" in text


def test_fit_all_tasks_with_smote_json(demo_store, tmp_path):
    config, _ = demo_store
    result = invoke("fit", "--task", "all", "--clf", "logreg", "--rebalance", "smote", "--cv", "3", "-p", "C=0.01",
                    "--no-model", "--out", str(tmp_path / "all"), "--config", str(config.root), "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    assert [r["task"] for r in reports] == list(config.tasks)
    for r in reports:
        assert r["rebalance"]["used"] == "smote" and r["model"] is None
        assert r["folds"][0]["params"]["C"] == 0.01
        saved = json.loads((tmp_path / "all" / f"{r['task']}-logreg" / "report.json").read_text())
        assert saved["metrics"] == r["metrics"]
    by_task = {r["task"]: r["metrics"]["balanced_accuracy"] for r in reports}
    assert by_task["form"] > 0.8 and by_task["glaze"] > 0.6  # rendered shapes and colours are easy


def test_report_marks_the_best_run_per_task_and_writes_csv(demo_store, tmp_path):
    config, _ = demo_store
    runs = tmp_path / "runs"
    for clf in ("logreg", "linsvc"):
        assert invoke("fit", "--task", "form", "--clf", clf, "--cv", "3", "-p", "C=0.01", "--no-model",
                      "--out", str(runs / clf), "--config", str(config.root)).exit_code == 0
    result = invoke("report", "--runs", str(runs), "--json")
    rows = json.loads(result.output)["runs"]
    assert {r["clf"] for r in rows} == {"logreg", "linsvc"}
    best = [r for r in rows if r["best"]]
    assert len(best) == 1 and best[0]["balanced_accuracy"] == max(r["balanced_accuracy"] for r in rows)
    table = pd.read_csv(runs / "runs.csv")
    assert len(table) == 2 and set(table.columns) >= {"task", "clf", "backbone", "rebalance", "balanced_accuracy",
                                                      "ece", "review_threshold"}
    assert "★" in invoke("report", "--runs", str(runs)).output


def test_report_includes_fine_tune_runs_and_never_cuts_a_run_name(demo_store, tmp_path):
    config, key = demo_store
    runs = tmp_path / "runs"
    long_name = "form-logreg-mobilenet_v2-imagenet1k_v1-20250101-120000-with-a-name-longer-than-a-terminal"
    assert invoke("fit", "--task", "form", "--cv", "3", "-p", "C=0.01", "--no-model", "--out",
                  str(runs / long_name), "--config", str(config.root)).exit_code == 0
    variant = "finetuned-shapes-and-glazes"
    task_reports = [{"task": t, "clf": "finetune", "backbone": "mobilenet_v2", "variant": variant, "n_test": 16,
                     "metrics": {"accuracy": a, "balanced_accuracy": a, "macro_f1": a}}
                    for t, a in (("form", 0.99), ("glaze", 0.75))]  # the shape finetune's report.json has
    (runs / "finetune" / "shapes-and-glazes").mkdir(parents=True)
    (runs / "finetune" / "shapes-and-glazes" / "report.json").write_text(json.dumps(
        {"run": "shapes-and-glazes", "backbone": "mobilenet_v2", "variant": variant, "tasks": task_reports,
         "seconds_this_session": 12.5}))
    rows = json.loads(invoke("report", "--runs", str(runs), "--json").output)["runs"]
    tuned = [r for r in rows if r["clf"] == "finetune"]
    assert [(r["task"], r["run"], r["variant"]) for r in tuned] == [
        ("form", "finetune/shapes-and-glazes", variant), ("glaze", "finetune/shapes-and-glazes", variant)]
    assert {r["task"]: r["best"] for r in tuned} == {"form": True, "glaze": True}  # 0.99 beats the logreg run
    text = invoke("report", "--runs", str(runs)).output  # CliRunner's terminal is 80 columns wide
    assert long_name in text and f"mobilenet_v2/{variant}" in text and f"{key}" in text
    assert len(pd.read_csv(runs / "runs.csv")) == 3


@pytest.mark.parametrize("args, message", [
    (["--task", "nope"], "unknown task 'nope'; valid choices: form, glaze, decoration, period"),
    (["--task", "glaze", "--clf", "xgb"], "unknown head 'xgb'; valid choices: lgbm, linsvc, logreg"),
    (["--task", "glaze", "--backbone", "resnet50"], "has no features for resnet50/*; it holds: mobilenet_v2/"),
    (["--task", "glaze", "--rebalance", "magic"], "unknown rebalance 'magic'; valid choices:"),
    (["--task", "glaze", "--split", "random"], "unknown split mode 'random'"),
    (["--task", "glaze", "-p", "C"], "parameter 'C' is not NAME=VALUE"),
    (["--task", "glaze", "-p", "gamma=2"], "unknown parameter 'gamma' for head 'logreg'"),
])
def test_bad_input_is_one_clear_line_and_exit_2(demo_store, args, message):
    config, _ = demo_store
    result = runner.invoke(app, ["fit", *args, "--config", str(config.root)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())  # usage errors come in a panel
    assert "Traceback" not in result.output


def _copy_collection(config: Config, tmp_path: Path, edit) -> Config:
    root = tmp_path / "copy"
    shutil.copytree(config.root, root, ignore=shutil.ignore_patterns("runs"))
    frame = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(root / "labels.csv", index=False)
    return Config.read(root / "featkit.toml")


def test_unknown_labels_are_left_out_of_that_task_only(demo_store, tmp_path):
    config, _ = demo_store
    def edit(frame):
        frame.loc[:9, "glaze"] = ""
    copy = _copy_collection(config, tmp_path, edit)
    out = invoke("fit", "--task", "glaze,form", "--cv", "3", "-p", "C=0.01", "--no-model", "--out",
                 str(tmp_path / "runs"), "--config", str(copy.root), "--json")
    assert out.exit_code == 0, out.output
    glaze, form = json.loads(out.output)
    assert glaze["rows"]["unknown"] == 10 and glaze["n_test"] == 70
    assert form["rows"]["unknown"] == 0 and form["n_test"] == 80


def test_a_one_class_task_is_refused(demo_store, tmp_path):
    config, _ = demo_store
    copy = _copy_collection(config, tmp_path, lambda f: f.__setitem__("form", "vase"))
    out = runner.invoke(app, ["fit", "--task", "form", "--config", str(copy.root)])
    assert out.exit_code == 2
    assert "task 'form' has only class 'vase' among the 80 labelled images of mobilenet_v2/imagenet1k_v1; " \
           "a classifier needs at least two classes" in " ".join(out.output.split())


def test_classes_too_small_for_the_folds_are_dropped_with_a_warning(demo_store, tmp_path):
    config, _ = demo_store
    def edit(frame):  # one object (2 views) gets a class of its own
        frame.loc[frame["object_id"] == frame["object_id"][0], "glaze"] = "unique_glaze"
    copy = _copy_collection(config, tmp_path, edit)
    out = invoke("fit", "--task", "glaze", "--cv", "3", "-p", "C=0.01", "--no-model", "--out",
                 str(tmp_path / "run"), "--config", str(copy.root), "--json")
    report = json.loads(out.output)
    assert report["dropped_classes"] == {"unique_glaze": "1 groups (< 3 folds: it cannot appear in every fold)"}
    assert "unique_glaze" not in report["classes"] and report["n_test"] == 78
    assert any("unique_glaze" in w for w in report["warnings"])


def test_no_store_yet_says_to_extract(demo_config, tmp_path):
    copy = Config.read(demo_config.root / "featkit.toml").replace(store=tmp_path / "none.h5")
    copy.write(tmp_path / "featkit.toml")
    shutil.copy(demo_config.root / "labels.csv", tmp_path / "labels.csv")
    out = runner.invoke(app, ["fit", "--task", "glaze", "--config", str(tmp_path)])
    assert out.exit_code == 2 and "run `featkit extract` first" in out.output


@pytest.mark.parametrize("clf, split", [("logreg", "stratified"), ("linsvc", "group"), ("lgbm", "stratified")])
def test_twelve_images_in_three_classes_fit_with_two_folds(demo_store, tmp_path, clf, split):
    """Two images per class in a training fold: the inner search shrinks its folds (or is skipped, saying why)."""
    config, _ = demo_store

    def edit(frame):  # 6 objects x 2 views labelled a, b, c; every other image unknown for the task
        frame["glaze"] = ""
        for k, obj in enumerate(frame["object_id"].unique()[:6]):
            frame.loc[frame["object_id"] == obj, "glaze"] = "abc"[k % 3]
    copy = _copy_collection(config, tmp_path, edit)
    out = runner.invoke(app, ["fit", "--task", "glaze", "--clf", clf, "--cv", "2", "--split", split, "--out",
                              str(tmp_path / "run"), "--config", str(copy.root), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["n_test"] == 12 and report["rows"]["used"] == 12 and not report["dropped_classes"]
    tuning = " ".join(f["tuning"]["method"] + f["tuning"].get("note", "") for f in report["folds"])
    if clf == "logreg":  # stratified: 2 rows per class in each training fold -> 2 inner folds
        assert "inner folds shrunk from 3 to 2: class" in tuning and "inner 2-fold CV" in tuning
    if clf == "linsvc":  # grouped: one object per class in training, so no inner fold keeps every class
        assert "no 2 inner folds keep every class in training" in tuning and "the middle of the grid" in tuning
        assert any("the middle of the grid" in w for w in report["warnings"])
    assert (tmp_path / "run" / "model.skops").is_file() and report["review"]["n"] == 12


def test_each_folds_c_and_the_saved_models_c_are_listed_with_why(demo_store, tmp_path):
    config, _ = demo_store
    out = invoke("fit", "--task", "glaze", "--cv", "3", "--out", str(tmp_path / "run"), "--config", str(config.root),
                 "--json")
    report = json.loads(out.output)
    c = report["hyperparameters"]["C"]
    assert c["folds"] == [f["params"]["C"] for f in report["folds"]] and len(c["folds"]) == 3
    assert c["model"] == report["model"]["params"]["C"] == json.loads((tmp_path / "run" / "model.json").read_text()
                                                                      )["params"]["C"]
    if set(c["folds"]) == {c["model"]}:
        assert c["why"] == f"every fold and the saved model chose C={c['model']:g}"
    else:  # names the values the folds chose and the saved model's
        assert f"chose {c['model']:g}" in c["why"] and all(f"{v:g} (" in c["why"] for v in c["folds"])
    assert f"- **C**: {c['why']}" in (tmp_path / "run" / "report.md").read_text()


def test_why_compares_the_saved_c_with_another_value_the_folds_chose():
    from featkit.fit import _why

    model = {"params": {"C": 0.1}, "trained_on": 120,
             "tuning": {"inner_scores": [{"C": 0.001, "score": 0.90, "std": 0.01},
                                         {"C": 0.01, "score": 0.978, "std": 0.004},
                                         {"C": 0.1, "score": 0.98, "std": 0.004}]}}
    why = _why("C", [0.1, 0.1, 0.01, 0.01, 0.001], model, early_stopping=False)
    # a tie between the saved value and another among the folds: compared with the other, never with itself
    assert "chose 0.1 (inner balanced accuracy 0.980) over 0.01 (0.978)" in why and "near tie" in why
    why = _why("C", [0.001, 0.001, 0.001], model, early_stopping=False)
    assert "over 0.001 (0.900)" in why and "with every row, 0.1 is better" in why
