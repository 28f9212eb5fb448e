"""No user string reaches the file system unchecked (issue 11, item 1).

A generated collection whose manifest columns (tasks) and cells (class labels) are
path-like — ``../../escaped``, ``a/b`` beside ``a-b``, ``..``, ``.hidden``, an absolute path
into the folder above the collection, 300 characters, 90 bytes of CJK — goes through
``fit``, ``umap``, ``outliers``, ``label-issues`` and ``finetune --run`` on the CLI. The
folder above the collection is snapshot before and after each command: nothing may be
created or changed outside the collection folder, every file name made from data is one
safe component (a different one per task), and what cannot be used is refused in one line.

The store is written directly with separable random features, so no network is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _toy import toy_collection
from featkit.paths import MAX_BYTES, is_safe, slug
from featkit_cli.main import app

# CJK task names and 200-character class names in figure titles
pytestmark = [pytest.mark.filterwarnings("ignore:Glyph .* missing from font"),
              pytest.mark.filterwarnings("ignore:Tight layout not applied")]
runner = CliRunner()
CLASSES = (("a/b", "../x", ".."), (".", "/etc/passwd", "c" * 200))  # labels of even and odd tasks


def _tasks(outside: Path) -> list[str]:
    return ["../../escaped", "a/b", "a-b", "..", ".hidden", f"{outside}/abs-escape", "L" * 300, "釉色" * 15, "ok"]


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    """(collection folder, the folder above it, its task names) with a store of 36 separable rows."""
    above = tmp_path_factory.mktemp("above")
    tasks = _tasks(above)
    config = toy_collection(above / "coll", tasks, lambda t, i: CLASSES[t % 2][i % 3])
    return config.root, above, tasks


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _run(coll, *args: str):
    """The command's result and the files it created or changed (relative to the folder above)."""
    root, above, _ = coll
    before = _snapshot(above)
    result = runner.invoke(app, [*args, "--config", str(root)])
    after = _snapshot(above)
    changed = {p for p, v in after.items() if before.get(p) != v}
    escaped = {p for p in changed if not (above / p).resolve().is_relative_to(root)}
    assert not escaped, f"{args}: written outside the collection: {sorted(escaped)}"
    assert not (above / "abs-escape").exists() and not any(above.glob("*escaped*"))
    return result, {above / p for p in changed}


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    text = (result.stderr or result.output).strip()
    assert "Traceback" not in text and text.startswith("error:")
    return " ".join(text.split())


def _safe_components(paths, base: Path) -> None:
    for path in paths:
        for part in path.relative_to(base).parts:
            assert is_safe(part, max_bytes=255), part


def test_fit_gives_every_path_like_task_its_own_safe_run_folder(coll):
    root, _, tasks = coll
    result, written = _run(coll, "fit", "--task", "all", "--cv", "2", "-p", "C=1", "--no-model", "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert [r["task"] for r in reports] == tasks  # the report keeps the real name
    runs = {p.parent for p in written if p.name == "report.json"}
    assert len(runs) == len(tasks) and all(r.parent == root / "runs" for r in runs)
    assert {r["run"] for r in reports} == {r.name for r in runs}
    for report in reports:
        assert report["run"].startswith(f"{slug(report['task'])}-logreg-toy-v1-")
        assert is_safe(report["run"], max_bytes=255)
    assert {r["run"].split("-logreg")[0] for r in reports} >= {"a-b", slug("a/b")} and slug("a/b") != "a-b"
    # every class label, path-like or not, is scored under its own name
    by_task = {r["task"]: r for r in reports}
    assert set(by_task["a/b"]["per_class"]) == set(CLASSES[1])
    assert set(by_task["../../escaped"]["per_class"]) == set(CLASSES[0])


def test_fit_out_is_the_users_folder_and_task_subfolders_stay_in_it(coll, tmp_path):
    root, _, _ = coll
    mine = root / "mine"
    result, written = _run(coll, "fit", "--task", "a/b,a-b,..", "--cv", "2", "-p", "C=1", "--no-model",
                           "--out", str(mine))
    assert result.exit_code == 0, result.output
    assert {p.parent.name for p in written if p.name == "report.json"} == {
        f"{slug('a/b')}-logreg", "a-b-logreg", f"{slug('..')}-logreg"}
    assert all(p.parent.parent == mine for p in written)


def test_umap_draws_one_safe_png_per_task_inside_explore(coll):
    root, _, tasks = coll
    result, written = _run(coll, "umap", "--task", "all", "--thumbnails", "0", "--json")
    assert result.exit_code == 0, result.output
    pngs = {p for p in written if p.suffix == ".png"}
    assert len(pngs) == len(tasks)
    assert {p.parent for p in written if not p.is_relative_to(root / "features")} == {root / "explore" / "toy__v1"}
    assert {p.name for p in pngs} == {f"umap_{slug(t)}.png" for t in tasks}
    assert {Path(p) for p in json.loads(result.stdout)["png"].values()} == pngs
    _safe_components(written, root)


@pytest.mark.parametrize("command", ["outliers", "label-issues"])
def test_explore_reports_of_path_like_tasks_stay_inside_explore(coll, command):
    root, above, _ = coll
    for task in ("../../escaped", f"{above}/abs-escape", ".."):
        extra = ("--C", "1", "--cv", "3") if command == "label-issues" else ()
        result, written = _run(coll, command, "--task", task, *extra, "--json")
        assert result.exit_code == 0, result.output
        prefix = command.replace("-", "_")
        assert f"{prefix}_{slug(task)}.csv" in {p.name for p in written}
        assert {p.parent for p in written} == {root / "explore" / "toy__v1"}


@pytest.mark.parametrize("run", ["../x", "a/b", "..", ".hidden", "/tmp/x", "L" * 300, "-rf", "a b"])
def test_unsafe_finetune_run_names_are_refused_before_anything_is_written(coll, run):
    result, written = _run(coll, "finetune", "--tasks", "ok", "--run", run, "--epochs", "1")
    message = _one_line_error(result)
    assert "fine-tuning run name" in message and "cannot be used as a file name" in message
    assert not written


def test_default_finetune_run_name_from_path_like_tasks_is_safe():
    from featkit.finetune.compare import single_run_name
    from featkit.finetune.settings import FinetuneSettings

    settings = FinetuneSettings(tasks=("a/b", "..", "釉色" * 15))
    settings.validate()  # the default name is made from data: slugged, never refused
    assert is_safe(settings.run_name) and "/" not in settings.run_name
    assert FinetuneSettings(tasks=("glaze", "form")).run_name == "glaze+form"  # safe names unchanged
    assert is_safe(single_run_name(settings.run_name, "../x")) and is_safe(single_run_name("r", "L" * 300))
    assert single_run_name("glaze+form", "form") == "glaze+form.single-form"


@pytest.mark.parametrize("args, expected", [
    (["fit", "--task", "a\x00b"], "unknown task 'a\\x00b'"),
    (["fit", "--task", "../../../etc"], "unknown task '../../../etc'"),
    (["extract", "--variant", "../x", "--limit", "0"], "variant '../x' cannot be used as a file name"),
    (["extract", "--variant", "a/b", "--limit", "0"], "variant 'a/b' cannot be used as a file name"),
    (["extract", "--variant", "釉" * 30, "--limit", "0"], "at most 78 bytes"),  # percent-encoded in the store
    (["fit", "--task", "ok", "-p", "C=abc"], "--param C=abc: C of head 'logreg' takes a number (e.g. C=0.0001), "
                                             "got 'abc'"),
    (["fit", "--task", "ok", "--clf", "lgbm", "-p", "num_leaves=7.5"], "num_leaves of head 'lgbm' takes a whole "
                                                                        "number"),
])
def test_bad_flags_are_one_line_errors_that_write_nothing(coll, args, expected):
    result, written = _run(coll, *args)
    assert expected in _one_line_error(result)
    assert not written


def test_slug_is_injective_bounded_and_leaves_safe_names_alone():
    names = _tasks(Path("/x")) + ["a\x00b", "-x", "a b", "glaze", "finetuned-glaze+form+tta-hflip", ""]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    for name, made in zip(names, slugs):
        assert is_safe(made) and len(made.encode()) <= MAX_BYTES
        assert (made == name) == is_safe(name)
