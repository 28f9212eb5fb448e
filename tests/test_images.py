"""Bad images never stop a run (issue 2, item 7).

Each awkward file is generated here, decoded with ``load_image`` and checked for the
right pixels or the right recorded reason; then `featkit extract` runs on a collection
of all of them with the real MobileNetV2 weights and must exit 0 and count the failures.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from featkit.data.images import ImageLoadError, load_image
from featkit_cli.main import app

RED, BLUE = (220, 20, 20), (20, 40, 220)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int = 60_000) -> None:
    """A valid-looking PNG whose header declares side x side pixels (3.6 gigapixels)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def _photo(h: int = 120, w: int = 160) -> Image.Image:
    rng = np.random.default_rng(0)
    base = np.zeros((h, w, 3), np.uint8)
    base[:, : w // 2] = RED
    base[:, w // 2 :] = BLUE
    noise = rng.integers(-10, 10, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_awkward_images(folder: Path) -> dict[str, str | None]:
    """Write one file of each awkward kind; return {name: expected failure fragment or None}."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    photo.save(folder / "plain.jpg", quality=92)
    expected: dict[str, str | None] = {"plain.jpg": None}

    expected["missing.jpg"] = "file not found"
    (folder / "empty.jpg").write_bytes(b"")
    expected["empty.jpg"] = "empty file"
    data = (folder / "plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expected["truncated.jpg"] = "truncated"
    (folder / "notes.jpg").write_text("this is a text file with an image extension\n")
    expected["notes.jpg"] = "not an image"
    _bomb_png(folder / "bomb.png")
    expected["bomb.png"] = "decompression bomb"

    photo.convert("CMYK").save(folder / "cmyk.jpg", quality=92)
    expected["cmyk.jpg"] = None
    ramp = np.tile(np.linspace(0, 65535, 160), (120, 1)).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "sixteen.png")  # mode I;16
    expected["sixteen.png"] = None
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    arr = np.asarray(pal).copy()
    arr[:20, :] = 7  # a transparent band along the top
    pal2 = Image.fromarray(arr, "P")
    pal2.putpalette(pal.getpalette())
    pal2.save(folder / "palette.png", transparency=7)
    expected["palette.png"] = None
    rot = Image.new("RGB", (200, 100))
    rot.paste(RED, (0, 0, 100, 100))
    rot.paste(BLUE, (100, 0, 200, 100))
    exif = rot.getexif()
    exif[0x0112] = 6  # stored landscape; shown rotated 90° clockwise
    rot.save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    expected["rotated.jpg"] = None
    photo.convert("L").save(folder / "grey.jpg")
    expected["grey.jpg"] = None
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(160)[None, :] < 40, 0, 255).astype(np.uint8).repeat(120, 0)))
    rgba.save(folder / "rgba.png")
    expected["rgba.png"] = None
    return expected


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    return folder, make_awkward_images(folder)


def test_every_awkward_file_embeds_or_fails_with_its_reason(awkward):
    folder, expected = awkward
    for name, failure in expected.items():
        if failure is None:
            img = load_image(folder / name, draft_size=256)
            assert img.mode == "RGB", name
        else:
            with pytest.raises(ImageLoadError, match=failure):
                load_image(folder / name, draft_size=256)


def test_sixteen_bit_keeps_its_gradient(awkward):
    folder, _ = awkward
    assert Image.open(folder / "sixteen.png").mode.startswith("I")
    img = np.asarray(load_image(folder / "sixteen.png"))
    assert img.shape == (120, 160, 3)
    left, right = img[:, :10].mean(), img[:, -10:].mean()
    assert left < 20 and right > 235  # not clipped to white, not collapsed to black
    assert 100 < img.mean() < 155
    assert np.all(np.diff(img[60, :, 0].astype(int)) >= 0)  # still a ramp


def test_exif_rotation_is_applied(awkward):
    folder, _ = awkward
    img = np.asarray(load_image(folder / "rotated.jpg")).astype(int)
    assert img.shape == (200, 100, 3)  # upright: portrait
    assert np.abs(img[50, 50] - RED).max() < 25  # stored left half is now on top
    assert np.abs(img[150, 50] - BLUE).max() < 25


def test_transparency_composites_on_white(awkward):
    folder, _ = awkward
    pal = np.asarray(load_image(folder / "palette.png")).astype(int)
    assert (pal[:20] == 255).all()  # transparent band
    assert np.abs(pal[60, 20] - RED).max() < 40 and np.abs(pal[60, 140] - BLUE).max() < 40
    rgba = np.asarray(load_image(folder / "rgba.png")).astype(int)
    assert (rgba[:, :40] == 255).all()
    assert np.abs(rgba[60, 60] - RED).max() < 20


def test_cmyk_and_grey_become_rgb_with_the_right_colours(awkward):
    folder, _ = awkward
    cmyk = np.asarray(load_image(folder / "cmyk.jpg")).astype(int)
    assert np.abs(cmyk[60, 20] - RED).max() < 30 and np.abs(cmyk[60, 140] - BLUE).max() < 30
    grey = np.asarray(load_image(folder / "grey.jpg"))
    assert grey.shape == (120, 160, 3)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_max_pixels_and_draft_mode(tmp_path):
    big = Image.new("RGB", (3000, 2000), (90, 120, 150))
    big.save(tmp_path / "scan.jpg", quality=80)
    big.save(tmp_path / "scan.png")
    with pytest.raises(ImageLoadError, match=r"3000x2000 = 6,000,000 pixels exceeds the limit of 1,000,000"):
        load_image(tmp_path / "scan.jpg", max_pixels=1_000_000)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(tmp_path / "scan.png", draft_size=256, max_pixels=1_000_000)  # no draft mode for PNG
    # JPEG draft mode: the largest of 1/2, 1/4, 1/8 keeping both sides >= 256 is 1/4 -> 750x500 (375k pixels)
    small = load_image(tmp_path / "scan.jpg", draft_size=256, max_pixels=1_000_000)
    assert small.size == (750, 500)
    assert np.abs(np.asarray(small).astype(int).mean(axis=(0, 1)) - (90, 120, 150)).max() < 3
    assert load_image(tmp_path / "scan.jpg").size == (3000, 2000)


def test_extract_records_failures_and_exits_zero(awkward, tmp_path, monkeypatch):
    folder, expected = awkward
    lines = ["image,kind"] + [f"{name},{Path(name).suffix[1:]}" for name in expected]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runner = CliRunner()
    init = runner.invoke(app, ["init", "--manifest", str(folder / "labels.csv"), "--tasks", "kind", "--name", "awk"])
    assert init.exit_code == 0, init.output

    result = runner.invoke(app, ["extract", "--workers", "1", "--batch-size", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    bad = {name: reason for name, reason in expected.items() if reason}
    assert summary["total"] == len(expected)
    assert summary["failed"] == len(bad)
    assert summary["computed"] == len(expected) - len(bad)
    assert summary["remaining"] == 0
    reasons = {f["id"]: f["error"] for f in summary["failures"]}
    assert set(reasons) == set(bad)
    for name, fragment in bad.items():
        assert fragment in reasons[name]

    info = runner.invoke(app, ["info", "--json"])
    assert info.exit_code == 0, info.output
    group = json.loads(info.stdout)["groups"][0]
    assert (group["rows"], group["done"], group["failed"], group["pending"]) == (len(expected), len(expected) - len(bad),
                                                                                 len(bad), 0)
    assert set(group["failures"]) == set(bad)

    # failures are remembered: a rerun skips them, --retry-failed tries them again
    _photo().save(folder / "missing.jpg")
    again = json.loads(runner.invoke(app, ["extract", "--workers", "0", "--json"]).stdout)
    assert (again["computed"], again["skipped_failed"]) == (0, len(bad))
    retry = runner.invoke(app, ["extract", "--workers", "0", "--retry-failed", "--json"])
    assert retry.exit_code == 0, retry.output
    retried = json.loads(retry.stdout)
    assert (retried["computed"], retried["failed"]) == (1, len(bad) - 1)
    group = json.loads(runner.invoke(app, ["info", "--json"]).stdout)["groups"][0]
    assert "missing.jpg" not in group["failures"] and group["done"] == len(expected) - len(bad) + 1
