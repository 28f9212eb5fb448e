"""The spine's commands as a user types them: help, backbones, extract, info, errors.

Each command is a thin skin over the library; these tests check what the user sees:
--json on stdout, human tables, and one clear line (exit 2, no traceback) on bad input.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from featkit.demo import make_demo_collection
from featkit_cli.main import app

runner = CliRunner()


def _text(result) -> str:
    return " ".join((result.stderr or result.output).replace("│", " ").split())  # usage errors come in a panel


@pytest.fixture
def collection(tmp_path, monkeypatch):
    """A 6-image rendered collection with featkit.toml, as the current folder."""
    make_demo_collection(tmp_path, n_objects=3, size=96)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "--manifest", "labels.csv", "--name", "pots"])
    assert result.exit_code == 0, result.output
    return tmp_path


def test_help_lists_the_spine_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "extract", "info", "backbones", "weights", "demo"):
        assert command in result.output
    extract_help = _text(runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "400"}))
    assert "resnet50" in extract_help and "efficientnet_lite0" in extract_help  # choices from the registry


def test_backbones_command():
    result = runner.invoke(app, ["backbones", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert len(rows) == 12
    assert (rows["resnet50"]["dim"], rows["resnet50"]["input_size"]) == (2048, 224)
    assert (rows["inception_v3"]["input_size"], rows["efficientnet_b3"]["input_size"]) == (299, 300)
    assert rows["mobilenet_v2"]["available"] and rows["efficientnet_lite0"]["available"]
    assert rows["resnet50"]["file"] == "resnet50-0676ba61.pth"
    table = runner.invoke(app, ["backbones", "efficientnet*"])
    assert table.exit_code == 0
    for name in ("efficientnet_b0", "efficientnet_b3", "efficientnet_lite0"):  # names are never cut short
        assert name in table.output
    assert "resnet50" not in table.output


def test_extract_then_info(collection):
    result = runner.invoke(app, ["extract", "--workers", "0", "--fp32", "--float16", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    text = _text(result)
    assert "mobilenet_v2/imagenet1k_v1" in text and "6 embedded" in text and "(fp32)" in text
    info = json.loads(runner.invoke(app, ["info", "--json"]).stdout)
    group = info["groups"][0]
    assert info["path"] == str(collection / "features" / "pots.h5")
    assert (group["rows"], group["done"], group["failed"], group["dtype"]) == (6, 6, 0, "float16")
    assert group["weights_sha256"].startswith("b0353104") and group["preprocess"]["crop_size"] == 224
    human = runner.invoke(app, ["info", "--failures"])
    assert human.exit_code == 0 and "mobilenet_v2/imagenet1k_v1" in human.output
    again = json.loads(runner.invoke(app, ["extract", "--workers", "0", "--json"]).stdout)
    assert (again["computed"], again["already_done"]) == (0, 6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "--backbone", "resnet51"], "unknown backbone 'resnet51'; valid choices: convnext_tiny"),
        (["extract", "--weights", "imagenet9k"], "unknown weights for mobilenet_v2 'imagenet9k'; valid choices: "
                                                "imagenet1k_v1, imagenet1k_v2, random"),
        (["extract", "--precision", "fp8"], "unknown precision 'fp8'; valid choices: auto, bf16, fp16, fp32"),
        (["extract", "--device", "tpu"], "unknown device 'tpu'"),
        (["extract", "--manifest", "other.csv"], "other.csv does not exist"),
        (["info", "--store", "missing.h5"], "no feature store at"),
    ],
)
def test_errors_are_one_clear_line(collection, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = _text(result)
    assert message in text and "Traceback" not in text
    assert result.exception is None or isinstance(result.exception, SystemExit)
