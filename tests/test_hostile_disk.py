"""Read-only folders and full disks beyond the store (issue 11, items 2 and 3): run folders, figures, CSVs.

Each failure is one line saying what to do, exit 2, no temporary file left, no half-written
report.json (or figure, or CSV) where a whole one was, and every run or figure written
before is unchanged. Real read-only folders and a real full disk use a bind mount and a
tmpfs when this process may mount (root in a container); the same paths are also driven by
simulated EROFS/ENOSPC, which always run. (The store's own faults: test_store_faults.py.)
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _toy import toy_collection
from featkit_cli.main import app
from test_store_faults import _mount, mounts  # noqa: F401  (a fixture)

runner = CliRunner()
RUNS_HINT = "pass --out DIR (or set [runs] path in featkit.toml) to write elsewhere"
EXPLORE_HINT = "pass --out DIR (or set [explore] path in featkit.toml) to write elsewhere"


@pytest.fixture
def coll(tmp_path):
    return toy_collection(tmp_path / "coll", ["glaze", "form"], lambda t, i: ("abc", "xyz")[t][i % 3])


def _cli(config, *args: str):
    return runner.invoke(app, [*args, "--config", str(config.root)])


def _fit(config, *extra: str):
    return _cli(config, "fit", "--task", "glaze", "--cv", "2", "-p", "C=1", *extra)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    text = (result.stderr or result.output).strip()
    assert text.startswith("error:") and "Traceback" not in text
    return " ".join(text.split())  # rich wraps long lines


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith(".featkit-")]


def _read_only(folder: Path, mounts) -> None:
    _mount("--bind", str(folder), str(folder))
    mounts.append(folder)
    _mount("-o", "remount,bind,ro", str(folder))


# -- read-only folders ----------------------------------------------------------------------
def test_read_only_runs_folder_mount(coll, mounts, tmp_path):
    assert _fit(coll).exit_code == 0
    runs = coll.runs_dir
    before = _files(runs)
    _read_only(runs, mounts)
    message = _error(_fit(coll))
    assert message.startswith(f"error: cannot write {runs}/glaze-logreg-toy-v1-")
    assert f": read-only file system; make the folder writable, or {RUNS_HINT}" in message
    assert _files(runs) == before
    # what the message says works: another folder, and reading the runs
    assert _fit(coll, "--out", str(tmp_path / "elsewhere")).exit_code == 0
    assert "cannot write" in _error(_cli(coll, "report", "--runs", str(runs)))
    table = _cli(coll, "report", "--runs", str(runs), "--csv", str(tmp_path / "runs.csv"), "--json")
    assert table.exit_code == 0 and len(json.loads(table.stdout)["runs"]) == 1


def test_read_only_runs_folder_simulated(coll, monkeypatch):
    runs = coll.runs_dir
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(runs):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    message = _error(_fit(coll))
    assert message.startswith(f"error: cannot write {runs}/glaze-logreg-toy-v1-")
    assert message.endswith(f"read-only file system; make the folder writable, or {RUNS_HINT}")
    assert not runs.exists()


def test_read_only_explore_folder_mount(coll, mounts, tmp_path):
    assert _cli(coll, "umap", "--task", "glaze", "--thumbnails", "0").exit_code == 0
    explore = coll.explore_root
    before = _files(explore)
    _read_only(explore, mounts)
    folder = explore / "toy__v1"
    for command, name in (("umap", "umap_glaze.png"), ("outliers", "outliers_glaze.csv"),
                          ("label-issues", "label_issues_glaze.csv"), ("duplicates", "duplicates.csv")):
        args = ["--task", "glaze"] if command != "duplicates" else []
        extra = ["--C", "1", "--cv", "3"] if command == "label-issues" else []
        message = _error(_cli(coll, command, *args, *extra))
        assert message == (f"error: cannot write {folder / name}: read-only file system; make the folder writable, "
                           f"or {EXPLORE_HINT}"), command
    assert _files(explore) == before
    assert _cli(coll, "outliers", "--task", "glaze", "--out", str(tmp_path / "mine")).exit_code == 0
    assert (tmp_path / "mine" / "outliers_glaze.csv").is_file()


def test_read_only_predictions_file(coll, mounts, tmp_path):
    assert _fit(coll, "--out", str(tmp_path / "run")).exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    _read_only(out, mounts)
    image = str(coll.root / "images" / "00.png")
    message = _error(_cli(coll, "predict", image, "--model", str(tmp_path / "run"), "-o", str(out / "p.csv")))
    assert message == f"error: cannot write {out / 'p.csv'}: read-only file system; make the folder writable, " \
                      "or pass another -o"


# -- full disks ---------------------------------------------------------------------------
@pytest.mark.parametrize("fails", ["model", "report"])
def test_full_disk_while_saving_a_run_keeps_the_earlier_runs(coll, monkeypatch, fails):
    assert _fit(coll).exit_code == 0
    runs = coll.runs_dir
    before = _files(runs)

    def half_then_full(path, data: bytes) -> None:
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    if fails == "model":
        import skops.io

        monkeypatch.setattr(skops.io, "dump", lambda obj, path: half_then_full(path, skops.io.dumps(obj)))
    else:
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: half_then_full(self, text.encode())
                            if self.name.endswith(".tmp.json") else real(self, text, *a, **k))
    message = _error(_fit(coll, *(() if fails == "model" else ("--no-model",))))
    file = "model.skops" if fails == "model" else "report.json"
    assert message.startswith(f"error: no space left on the disk of {runs}/glaze-logreg-toy-v1-")
    assert f"/{file}; free some space, or {RUNS_HINT}, and rerun (files written before are unchanged)" in message
    assert _files(runs) == before  # the half-written run folder is gone, the earlier run untouched
    _no_temporaries(runs)
    monkeypatch.undo()
    assert _fit(coll).exit_code == 0 and len(list(runs.iterdir())) == 2


def test_full_disk_while_drawing_keeps_the_earlier_figure(coll, monkeypatch):
    from matplotlib.figure import Figure

    assert _cli(coll, "umap", "--task", "glaze", "--thumbnails", "0").exit_code == 0
    explore = coll.explore_root
    before = _files(explore)
    png = explore / "toy__v1" / "umap_glaze.png"
    assert png.read_bytes()[:4] == b"\x89PNG"

    def savefig(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    message = _error(_cli(coll, "umap", "--task", "glaze", "--thumbnails", "0"))
    assert message == (f"error: no space left on the disk of {png.parent} while writing {png}; free some space, "
                       f"or {EXPLORE_HINT}, and rerun (files written before are unchanged)")
    assert _files(explore) == before
    _no_temporaries(explore)


def test_a_real_full_disk_under_runs(tmp_path, mounts):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk))
    mounts.append(disk)
    config = toy_collection(tmp_path / "coll", ["glaze"], lambda t, i: "abc"[i % 3], runs=disk / "runs")
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill the disk, then give back 8 KiB: less than a run needs
        with pytest.raises(OSError) as full:
            while True:
                fh.write(b"\0" * 4096)
        assert full.value.errno == errno.ENOSPC
    with open(filler, "r+b") as fh:
        fh.truncate(filler.stat().st_size - 8192)
    message = _error(_fit(config))
    assert message.startswith(f"error: no space left on the disk of {disk}/runs")
    assert "free some space" in message and "and rerun" in message
    assert not list((disk / "runs").iterdir())  # the half-written run folder was removed
    filler.unlink()
    assert _fit(config).exit_code == 0


# -- anything else the disk says --------------------------------------------------------------
def test_an_unexpected_disk_error_is_still_one_line(coll, monkeypatch):
    assert _fit(coll).exit_code == 0
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "report.json":
            raise OSError(errno.EIO, "Input/output error", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    message = _error(_cli(coll, "report"))
    assert message.startswith(f"error: cannot use {coll.runs_dir}/glaze-logreg-toy-v1-")
    assert message.endswith("/report.json: input/output error")
