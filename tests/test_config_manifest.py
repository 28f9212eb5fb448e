"""Collections: manifests, ImageFolder trees and `featkit init` (issue 2, item 2).

Every test writes a real CSV (and real image files) into a temporary folder and runs
the library or the CLI on it; errors must exit 2 with a message naming the bad value.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featkit.config import CONFIG_NAME, Config, find_config
from featkit.data import load_manifest
from featkit.errors import FeatkitError
from featkit_cli.main import app

runner = CliRunner()

HEADER = "image,dynasty,glaze,object_id,split\n"
ROWS = [
    "img/a.jpg,ming,blue_white,o1,train",
    "img/b.jpg,ming,,o1,train",  # glaze unknown
    "img/c.jpg,qing,copper_red,o2,test",
    "img/d.jpg,,celadon,o3,train",  # dynasty unknown
    "img/e.jpg,song,celadon,o3,val",
    *(f"img/x{i}.jpg,{('ming', 'qing', 'song')[i % 3]},{('celadon', 'copper_red')[i % 2]},o{4 + i // 2},train"
      for i in range(7)),
]


def _write(folder: Path, rows=ROWS, header=HEADER, name="labels.csv", images=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / name
    csv.write_text(header + "".join(r + "\n" for r in rows))
    if images:
        for row in rows:
            rel = row.split(",")[0]
            if rel and not rel.startswith(("/", "..")):
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (32, 24), (120, 60, 30)).save(folder / rel)
    return csv


def _init(args: list[str]):
    return runner.invoke(app, ["init", *args])


def _error(result) -> str:
    return " ".join((result.stderr or result.output).split())  # rich wraps long lines


def test_init_infers_and_writes_toml(tmp_path, monkeypatch):
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = _init(["--manifest", "labels.csv", "--json"])
    assert result.exit_code == 0, result.output
    doc = tomllib.loads((tmp_path / CONFIG_NAME).read_text())
    coll = doc["collection"]
    assert coll["manifest"] == "labels.csv"
    assert coll["image_column"] == "image"
    assert coll["tasks"] == ["dynasty", "glaze"]
    assert coll["group"] == "object_id"
    assert coll["split"] == "split"
    assert doc["store"]["path"] == f"features/{tmp_path.name}.h5"

    config = find_config()
    assert config.store_path == tmp_path / "features" / f"{tmp_path.name}.h5"
    collection = load_manifest(config)
    assert list(collection.ids[:5]) == ["img/a.jpg", "img/b.jpg", "img/c.jpg", "img/d.jpg", "img/e.jpg"]
    assert len(collection) == 12
    assert list(collection.groups[:5]) == ["o1", "o1", "o2", "o3", "o3"]
    assert list(collection.split[:5]) == ["train", "train", "test", "train", "val"]


def test_init_every_setting_from_flags(tmp_path, monkeypatch):
    _write(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    result = _init(["--manifest", "data/labels.csv", "--name", "pots", "--image-column", "image",
                    "--tasks", "glaze", "--group", "dynasty", "--split", "split", "--store", "cache/pots.h5"])
    assert result.exit_code == 0, result.output
    config = find_config(tmp_path)
    assert config.name == "pots"
    assert config.manifest == Path("data/labels.csv")
    assert config.tasks == ("glaze",)
    assert config.group == "dynasty"
    assert config.split == "split"
    assert config.store_path == tmp_path / "cache" / "pots.h5"
    # image paths are relative to the CSV, not to featkit.toml
    collection = load_manifest(config)
    assert collection.path("img/a.jpg") == (tmp_path / "data" / "img" / "a.jpg").resolve()
    assert collection.path("img/a.jpg").is_file()

    # a second init refuses to overwrite, --force does
    again = _init(["--manifest", "data/labels.csv", "--tasks", "dynasty"])
    assert again.exit_code == 2 and "--force" in _error(again)
    forced = _init(["--manifest", "data/labels.csv", "--tasks", "dynasty", "--force"])
    assert forced.exit_code == 0, forced.output
    assert find_config(tmp_path).tasks == ("dynasty",)


def test_flags_override_the_toml_at_run_time(tmp_path, monkeypatch):
    """`featkit info --store X` and `extract --manifest/--store` win over featkit.toml."""
    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _init(["--manifest", "labels.csv"]).exit_code == 0
    base = find_config()
    over = base.replace(store=Path("other.h5"), manifest=None, tasks=["glaze"], name="x")
    assert over.store_path == tmp_path / "other.h5"
    assert over.manifest == base.manifest  # None leaves a setting alone
    assert over.tasks == ("glaze",) and over.name == "x"
    result = runner.invoke(app, ["info", "--store", "nowhere.h5"])
    assert result.exit_code == 2
    assert "nowhere.h5" in _error(result)


def test_cli_path_flags_are_relative_to_the_cwd(tmp_path, monkeypatch):
    _write(tmp_path / "coll")
    monkeypatch.chdir(tmp_path / "coll")
    assert _init(["--manifest", "labels.csv"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["extract", "--config", "coll", "--store", "here.h5", "--limit", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "here.h5").is_file()
    assert not (tmp_path / "coll" / "features").exists()
    info = runner.invoke(app, ["info", "--store", "here.h5", "--json"])
    assert info.exit_code == 0 and '"rows": 12' in info.stdout


def test_empty_label_cells_are_unknown(tmp_path):
    csv = _write(tmp_path)
    config = Config(root=tmp_path, name="t", manifest=csv.relative_to(tmp_path), tasks=("dynasty", "glaze"))
    collection = load_manifest(config)
    dynasty = collection.task_labels("dynasty")
    glaze = collection.task_labels("glaze")
    assert dynasty.dtype == object and glaze.dtype == object
    assert dynasty[3] is None and glaze[1] is None
    assert [v is None for v in dynasty] == [False, False, False, True] + [False] * 8
    assert glaze[0] == "blue_white"
    with pytest.raises(FeatkitError, match="unknown task 'period'.*dynasty, glaze"):
        collection.task_labels("period")


def test_image_folder_collection(tmp_path, monkeypatch):
    for cls, n in (("ming", 3), ("qing", 2)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    result = _init(["--image-folder", "imgs", "--json"])
    assert result.exit_code == 0, result.output
    config = find_config()
    assert config.image_folder == Path("imgs") and config.tasks == ("label",)
    collection = load_manifest(config)
    assert len(collection) == 5
    assert list(collection.task_labels("label")) == ["ming"] * 3 + ["qing"] * 2
    assert collection.ids[0] == "ming/0.png"


@pytest.mark.parametrize(
    "rows, header, flags, expected",
    [
        (ROWS, HEADER, ["--tasks", "dynasty,period"], ["period", "dynasty, glaze, object_id"]),
        (ROWS, HEADER, ["--image-column", "path"], ["'path'", "image, dynasty"]),
        (ROWS, HEADER, ["--group", "owner"], ["'owner'"]),
        (ROWS + ["img/a.jpg,qing,celadon,o9,train"], HEADER, [], ["duplicate", "img/a.jpg"]),
        (ROWS + ["./img/a.jpg,qing,celadon,o9,train"], HEADER, [], ["duplicate", "img/a.jpg"]),
        (ROWS + ["../x.jpg,qing,celadon,o9,train"], HEADER, [], ["'../x.jpg'", "outside"]),
        (ROWS + ["img/../../x.jpg,qing,celadon,o9,train"], HEADER, [], ["'img/../../x.jpg'", "outside"]),
        (ROWS + ["/abs.jpg,qing,celadon,o9,train"], HEADER, [], ["'/abs.jpg'", "outside"]),
        (ROWS + ["C:\\pots\\x.jpg,qing,celadon,o9,train"], HEADER, [], ["x.jpg", "outside"]),
        (ROWS + [",qing,celadon,o9,train"], HEADER, [], ["row 14", "empty image path"]),
        ([], HEADER, [], ["labels.csv", "header but no rows"]),
        ([], "", [], ["labels.csv", "is empty"]),
    ],
    ids=["missing-task", "missing-image-col", "missing-group", "duplicate", "duplicate-normalised",
         "parent", "parent-nested", "absolute", "windows-drive", "empty-path", "header-only", "empty"],
)
def test_init_errors(tmp_path, monkeypatch, rows, header, flags, expected):
    _write(tmp_path, rows=rows, header=header, images=False)
    monkeypatch.chdir(tmp_path)
    result = _init(["--manifest", "labels.csv", *flags])
    assert result.exit_code == 2, result.output
    message = _error(result)
    assert "Traceback" not in message
    for part in expected:
        assert part in message
    assert not (tmp_path / CONFIG_NAME).exists()  # nothing written on error


def test_missing_column_at_load_time(tmp_path):
    """A featkit.toml naming a column the CSV lost (edited later) is a clear error, too."""
    csv = _write(tmp_path)
    config = Config(root=tmp_path, name="t", manifest=Path(csv.name), tasks=("dynasty", "ware"), group="kiln")
    with pytest.raises(FeatkitError, match=r"'ware', 'kiln' not in labels.csv; its columns are: image, dynasty"):
        load_manifest(config)


def test_missing_manifest_and_missing_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _init(["--manifest", "nope.csv"])
    assert result.exit_code == 2 and "nope.csv" in _error(result)
    for command in (["extract"], ["info"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        message = _error(result)
        assert f"no {CONFIG_NAME} in {tmp_path.resolve()}" in message
        assert "featkit init" in message
    with pytest.raises(FeatkitError, match="no featkit.toml"):
        find_config(tmp_path)
    # a toml whose manifest went missing
    Config(root=tmp_path, name="t", manifest=Path("gone.csv"), tasks=("a",)).write()
    result = runner.invoke(app, ["extract"])
    assert result.exit_code == 2 and "gone.csv does not exist" in _error(result)


def test_bad_toml_is_a_clear_error(tmp_path):
    (tmp_path / CONFIG_NAME).write_text('[collection]\nname = "x"\nmanifest = "a.csv"\ntask = ["y"]\n')
    with pytest.raises(FeatkitError, match=r"unknown key\(s\) task.*valid keys: .*tasks"):
        find_config(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[collection\n")
    with pytest.raises(FeatkitError, match="not valid TOML"):
        find_config(tmp_path)


def test_tasks_as_a_single_string_in_toml(tmp_path):
    """`tasks = "dynasty"` (a hand-edited file) means one task, not one task per letter."""
    csv = _write(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(f'[collection]\nname = "x"\nmanifest = "{csv.name}"\ntasks = "dynasty"\n')
    config = find_config(tmp_path)
    assert config.tasks == ("dynasty",)
    assert load_manifest(config).tasks == ("dynasty",)


def test_config_round_trip_keeps_other_sections(tmp_path):
    config = Config(root=tmp_path, name="n", manifest=Path("m.csv"), tasks=("a", "b"), group="g", split="s",
                    store=Path("x/y.h5"), extra={"heads": {"default": "logreg"}})
    config.write()
    back = Config.read(tmp_path / CONFIG_NAME)
    assert back == config
    assert back.extra == {"heads": {"default": "logreg"}}


def test_index_of_and_manifest_hash(tmp_path):
    csv = _write(tmp_path)
    config = Config(root=tmp_path, name="t", manifest=Path(csv.name), tasks=("dynasty",))
    collection = load_manifest(config)
    np.testing.assert_array_equal(collection.index_of(["img/c.jpg", "img/a.jpg"]), [2, 0])
    with pytest.raises(FeatkitError, match="'img/zz.jpg' is not in collection"):
        collection.index_of(["img/zz.jpg"])
    first = collection.manifest_hash
    csv.write_text(csv.read_text().replace("song", "yuan"))
    assert load_manifest(config).manifest_hash != first


def test_inferred_tasks_do_not_count_empty_cells_as_a_class(tmp_path, monkeypatch):
    rows = [f"i{i}.jpg,{('a', 'b', '')[i % 3]},{i}" for i in range(6)]  # 2 classes + unknown; an id column
    _write(tmp_path, rows=rows, header="image,glaze,serial\n", images=False)
    monkeypatch.chdir(tmp_path)
    result = _init(["--manifest", "labels.csv"])
    assert result.exit_code == 0, result.output
    assert find_config().tasks == ("glaze",)
