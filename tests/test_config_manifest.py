"""Collections: manifests, ImageFolder trees and `featkit init` (issue 2, item 2).

Every test writes a real CSV (and real image files) into a temporary folder and runs
the library or the CLI on it; errors must exit 2 with a message naming the bad value.
"""

from __future__ import annotations

import json
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
        (ROWS + ["C:\\pots\\x.jpg,qing,celadon,o9,train"], HEADER, [], ["x.jpg", "Windows path", "relative"]),
        (ROWS + [",qing,celadon,o9,train"], HEADER, [], ["row 14", "empty image path"]),
        ([], HEADER, [], ["labels.csv", "header but no rows"]),
        ([], "", [], ["labels.csv", "empty file (0 bytes)"]),
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
    with pytest.raises(FeatkitError, match=r"labels.csv has no column 'ware' \(tasks\), 'kiln' \(group\), named by "
                                           r"\[collection\] in featkit.toml or a flag; its columns are: image, dynasty"):
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


def test_config_round_trip(tmp_path):
    config = Config(root=tmp_path, name="n", manifest=Path("m.csv"), tasks=("a", "b"), group="g", split="s",
                    store=Path("x/y.h5"), runs=Path("r"), explore=Path("e"))
    config.write()
    assert Config.read(tmp_path / CONFIG_NAME) == config


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


# -- featkit.toml validation (issue 11, item 3): one line through the CLI, naming file, key and type ----
@pytest.mark.parametrize("toml, expected", [
    ('[collection]\nname = "x"\nmanifest = 5\n',
     "featkit.toml: [collection] manifest must be a string (a CSV path relative to featkit.toml), got 5 (integer)"),
    ('[collection]\nname = "x"\nmanifest = "labels.csv"\ntasks = [1, 2]\n',
     "featkit.toml: [collection] tasks must be a list of column names (strings), got [1, 2]"),
    ('[collection]\nname = "x"\nmanifest = "labels.csv"\n[store]\npath = true\n',
     "featkit.toml: [store] path must be a string (an .h5 path relative to featkit.toml), got True (boolean)"),
    ('store = "x.h5"\n[collection]\nname = "x"\nmanifest = "labels.csv"\n',
     "featkit.toml: [store] must be a table (e.g. [store] path = \"...\"), got 'x.h5' (string)"),
    ('[collection]\nname = "x"\nmanifest = "labels.csv"\n[stor]\npath = "a.h5"\n',
     "featkit.toml: unknown table(s) [stor]; valid tables: [collection], [store], [runs], [explore]"),
    ('[collection]\nname = "my pots"\nmanifest = "labels.csv"\n',
     "featkit.toml: [collection] name 'my pots' cannot be used as a file name"),
    ('[collection]\nname = "../../x"\nmanifest = "labels.csv"\n',
     "featkit.toml: [collection] name '../../x' cannot be used as a file name"),
    ('[collection]\nmanifest = "labels.csv"\n', "featkit.toml has no [collection] table with a name"),
    ('[collection]\nname = "x"\nmanifest = "labels.csv"\ntasks = ["dynasty", "ware"]\ngroup = "kiln"\n',
     "labels.csv has no column 'ware' (tasks), 'kiln' (group), named by [collection] in featkit.toml or a flag; "
     "its columns are: image, dynasty, glaze, object_id, split"),
], ids=["manifest-int", "tasks-ints", "store-bool", "store-not-table", "unknown-table", "name-space", "name-path",
        "no-name", "tasks-not-columns"])
def test_toml_problems_are_one_line_cli_errors(tmp_path, monkeypatch, toml, expected):
    _write(tmp_path, images=False)
    (tmp_path / CONFIG_NAME).write_text(toml)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["extract", "--limit", "0"])  # reads the manifest before any network
    assert result.exit_code == 2, result.output
    assert _error(result).startswith("error: ") and expected in _error(result)
    assert len((result.stderr or result.output).strip().splitlines()) <= 3  # one line, as rich wraps it
    assert not (tmp_path / "features").exists()


def test_a_non_utf8_toml_says_so(tmp_path):
    (tmp_path / CONFIG_NAME).write_bytes('[collection]\nname = "céladon"\n'.encode("latin-1"))
    with pytest.raises(FeatkitError, match=r"featkit.toml is not UTF-8 text .* save it as UTF-8"):
        find_config(tmp_path)


def test_collection_names_from_unsafe_folders_are_made_safe_and_given_ones_are_checked(tmp_path, monkeypatch):
    folder = tmp_path / "My Pots (2024)"
    _write(folder)
    monkeypatch.chdir(folder)
    result = _init(["--manifest", "labels.csv", "--json"])
    assert result.exit_code == 0, result.output
    name = find_config().name
    assert name.startswith("My-Pots-2024-") and find_config().store_path.parent == folder / "features"
    refused = _init(["--manifest", "labels.csv", "--name", "../pots", "--force"])
    assert refused.exit_code == 2 and "collection name '../pots' cannot be used as a file name" in _error(refused)
    assert find_config().name == name  # unchanged


# -- manifests that name the real problem (issue 11, item 4) ------------------------------------
def _rows(sep: str, rows=ROWS, header=HEADER) -> str:
    return "".join(line.replace(",", sep) + "\n" for line in [header.strip(), *rows])


@pytest.mark.parametrize("sep", [";", "\t", "|"], ids=["semicolon", "tab", "pipe"])
def test_other_delimiters_are_sniffed(tmp_path, monkeypatch, sep):
    _write(tmp_path)
    (tmp_path / "labels.csv").write_text(_rows(sep))
    monkeypatch.chdir(tmp_path)
    result = _init(["--manifest", "labels.csv", "--json"])
    assert result.exit_code == 0, result.output
    assert f"delimiter: {sep!r} (sniffed)" in json.loads(result.stdout)["notes"]
    config = find_config()
    assert (config.image_column, config.tasks, config.group, config.split) == \
        ("image", ("dynasty", "glaze"), "object_id", "split")
    collection = load_manifest(config)
    assert collection.ids[0] == "img/a.jpg" and collection.task_labels("glaze")[2] == "copper_red"


def test_commas_stay_the_delimiter_when_labels_hold_semicolons(tmp_path, monkeypatch):
    rows = [r.replace("celadon", "celadon;crackle") for r in ROWS]
    _write(tmp_path, rows=rows)
    monkeypatch.chdir(tmp_path)
    assert _init(["--manifest", "labels.csv"]).exit_code == 0
    assert "celadon;crackle" in set(load_manifest(find_config()).task_labels("glaze"))


def test_a_latin1_manifest_names_row_column_and_the_fix(tmp_path, monkeypatch):
    csv = _write(tmp_path)
    csv.write_bytes(csv.read_text().replace("img/d.jpg,,celadon", "img/d.jpg,,céladon").encode("latin-1"))
    monkeypatch.chdir(tmp_path)
    message = _error(_init(["--manifest", "labels.csv"]))
    assert message == (f"error: manifest {csv.name} is not UTF-8: row 5, column 'glaze' holds byte 0xE9 ('céladon' "
                       "if it is Latin-1/Windows-1252); save it as UTF-8 (in Excel: Save As, CSV UTF-8)")


@pytest.mark.parametrize("encoding, sep", [("utf-8-sig", ","), ("utf-16", "\t")], ids=["excel-csv-utf8", "excel-unicode-text"])
def test_byte_order_marks_are_honoured(tmp_path, monkeypatch, encoding, sep):
    _write(tmp_path)
    (tmp_path / "labels.csv").write_bytes(_rows(sep).replace("ming", "明").encode(encoding))
    monkeypatch.chdir(tmp_path)
    assert _init(["--manifest", "labels.csv"]).exit_code == 0
    collection = load_manifest(find_config())
    assert find_config().image_column == "image" and collection.task_labels("dynasty")[0] == "明"


def test_utf16_without_a_byte_order_mark_is_named(tmp_path, monkeypatch):
    _write(tmp_path, images=False)
    (tmp_path / "labels.csv").write_bytes(_rows(",").encode("utf-16-le"))
    monkeypatch.chdir(tmp_path)
    assert "has NUL bytes (row 1): it is UTF-16 without a byte-order mark" in _error(_init(["--manifest", "labels.csv"]))


def test_absolute_paths_inside_the_collection_are_made_relative(tmp_path, monkeypatch):
    real = tmp_path / "real"
    _write(real)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    rows = [f"{real}/img/a.jpg,ming,blue_white,o1,train",  # absolute, as the folder really is
            f"{tmp_path}/link/img/b.jpg,ming,,o1,train",  # absolute, through a link to the collection
            "img/x0/../c.jpg,qing,copper_red,o2,test",  # '..' that stays inside
            *ROWS[3:]]
    _write(real, rows=rows, images=False)
    monkeypatch.chdir(tmp_path / "link")
    result = _init(["--manifest", "labels.csv"])
    assert result.exit_code == 0, result.output
    collection = load_manifest(find_config())
    assert list(collection.ids[:3]) == ["img/a.jpg", "img/b.jpg", "img/c.jpg"]
    outside = tmp_path / "elsewhere.jpg"
    _write(real, rows=[*rows, f"{outside},qing,celadon,o9,train"], images=False)
    message = _error(_init(["--manifest", "labels.csv", "--force"]))
    assert f"row 14: image path '{outside}' is outside the collection folder {real}" in message


def test_one_unusual_extension_does_not_hide_the_image_column(tmp_path, monkeypatch):
    rows = [f"img/{i}.png,{'ab'[i % 2]},{'xyz'[i % 3]}" for i in range(8)] + ["img/8.jp2,a,x"]
    _write(tmp_path, rows=rows, header="image,glaze,form\n", images=False)
    monkeypatch.chdir(tmp_path)
    result = _init(["--manifest", "labels.csv", "--json"])
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert "image column: 'image' (1 of 9 paths have another extension: .jp2; extract decodes what Pillow can " \
           "and records the rest as failures)" in notes
    assert find_config().tasks == ("glaze", "form")


@pytest.mark.parametrize("header, expected", [
    ("image,kind,glaze,kind\n", "has 2 columns named 'kind' (columns 2 and 4); rename all but one"),
    ("image,kind,glaze, kind \n", "has 2 columns named 'kind' (columns 2 and 4)"),
    ("image,kind,kind,kind\n", "has 3 columns named 'kind' (columns 2, 3 and 4)"),
])
def test_duplicate_headers_are_refused(tmp_path, monkeypatch, header, expected):
    _write(tmp_path, rows=[f"img/{i}.png,a,b,c" for i in range(4)], header=header, images=False)
    monkeypatch.chdir(tmp_path)
    assert expected in _error(_init(["--manifest", "labels.csv"]))


@pytest.mark.parametrize("bad", [0, 4], ids=["first-row", "later-row"])
def test_a_row_with_more_fields_than_the_header_is_named(tmp_path, monkeypatch, bad):
    rows = list(ROWS)
    rows[bad] = rows[bad].replace("blue_white", "blue,white").replace("song", "song,yuan")
    _write(tmp_path, rows=rows, images=False)
    monkeypatch.chdir(tmp_path)
    assert (f"row {bad + 2} has 6 fields but the header has 5; a value holding ',' must be in double quotes"
            in _error(_init(["--manifest", "labels.csv"])))


def test_fifos_in_and_as_the_manifest_never_hang_init(tmp_path, monkeypatch):
    import os
    import threading

    _write(tmp_path, rows=[r.replace("img/a.jpg", "img/pipe.jpg") for r in ROWS], images=False)
    (tmp_path / "img").mkdir()
    os.mkfifo(tmp_path / "img" / "pipe.jpg")  # the decoder records it as "not a regular file (FIFO)"
    os.mkfifo(tmp_path / "pipe.csv")
    monkeypatch.chdir(tmp_path)
    results = []
    worker = threading.Thread(target=lambda: results.extend(
        [_init(["--manifest", "labels.csv"]), _init(["--manifest", "pipe.csv", "--force"])]), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "init blocked on a FIFO"
    assert results[0].exit_code == 0, results[0].output
    assert "img/pipe.jpg" in load_manifest(find_config()).ids
    assert "manifest pipe.csv cannot be read: not a regular file (FIFO)" in _error(results[1])


@pytest.mark.slow
def test_an_images_folder_linked_to_another_disk_is_a_normal_collection(tmp_path, monkeypatch):
    """init (with absolute paths through the link), extract and fit through the CLI on a linked images/."""
    from featkit.demo import make_demo_collection

    other = tmp_path / "other-disk"
    make_demo_collection(other, n_objects=6, size=64)
    root = tmp_path / "coll"
    root.mkdir()
    (root / "images").symlink_to(other / "images", target_is_directory=True)
    lines = (other / "labels.csv").read_text().splitlines()
    lines[1] = f"{root}/{lines[1]}"  # one absolute path, through the link: inside the collection
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(root)
    assert _init(["--manifest", "labels.csv", "--tasks", "form"]).exit_code == 0
    assert all(i.startswith("images/") for i in load_manifest(find_config()).ids)
    extracted = runner.invoke(app, ["extract", "--workers", "0", "--json"])
    assert extracted.exit_code == 0, extracted.output
    assert json.loads(extracted.stdout)["computed"] == 12
    fitted = runner.invoke(app, ["fit", "--task", "form", "--cv", "2", "-p", "C=0.1", "--no-model", "--json"])
    assert fitted.exit_code == 0, fitted.output
    report = json.loads(fitted.stdout)
    assert report["rows"]["missing_features"] == 0 and report["n_test"] >= 10  # (a one-object class is left out)
