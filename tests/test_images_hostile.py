"""Hostile image files (issue 11, items 4 and 7): each one embeds or is a recorded failure whose
reason names the real problem; none hangs, crashes a DataLoader worker or takes unbounded memory.

Every file is generated here. The cases and their expected outcomes are the image rows of
tests/HOSTILE.md. Peak memory is measured in a child process (its own ``ru_maxrss``), so the
test process's earlier allocations cannot hide or inflate it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import AvifImagePlugin, Image, PngImagePlugin

from _manifest import write_manifest

import featkit.data.images as images
from featkit.api import Collection
from featkit.backbones import Preprocess
from featkit.data.images import DEFAULT_MAX_ASPECT, ImageLoadError, load_image
from featkit.extract import ExtractSettings
from featkit.extract.decode import ImageDataset
from featkit.extract.gpu import DecodeSpec, EncodedDataset, decode_resize, jpeg_bytes
from featkit.store import FeatureStore

RAMP = np.linspace(0, 1, 1200, dtype=np.float32).reshape(30, 40)
WIDE_REASON = (r"aspect ratio 5,000:1 \(40000x8 pixels\) exceeds the limit of 200:1; resizing its short side to 256 "
               r"would make a 1,280,000x256 image")


def float_tiff(path: Path, arr: np.ndarray) -> None:
    """An uncompressed little-endian TIFF of float samples, (h, w) or (h, w, bands): layouts Pillow cannot save."""
    arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))
    (h, w), bands, bits = arr.shape[:2], 1 if arr.ndim == 2 else arr.shape[2], arr.dtype.itemsize * 8
    n_tags = 11
    extra_at = 8 + 2 + 12 * n_tags + 4  # per-band BitsPerSample, then per-band SampleFormat (3 = float)
    data_at = extra_at + 4 * bands

    def short(tag: int, value: int, count: int = 1) -> bytes:
        if count == 1:  # the value itself, left-justified in the entry
            return struct.pack("<HHIHH", tag, 3, count, value, 0)
        return struct.pack("<HHII", tag, 3, count, value)  # an offset to the values

    def long(tag: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, 4, 1, value)

    tags = [long(256, w), long(257, h), short(258, bits if bands == 1 else extra_at, bands), short(259, 1),
            short(262, 2 if bands == 3 else 1), long(273, data_at), short(277, bands), long(278, h),
            long(279, arr.nbytes), short(284, 1), short(339, 3 if bands == 1 else extra_at + 2 * bands, bands)]
    path.write_bytes(b"II*\x00" + struct.pack("<IH", 8, n_tags) + b"".join(tags) + b"\x00" * 4
                     + struct.pack(f"<{2 * bands}H", *[bits] * bands, *[3] * bands) + arr.tobytes())


def _png_with_text() -> bytearray:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "a vase")
    buf = io.BytesIO()
    Image.fromarray((RAMP * 255).astype(np.uint8)).convert("RGB").save(buf, "PNG", pnginfo=info)
    return bytearray(buf.getvalue())


def _flip_crc(data: bytearray, chunk: bytes) -> bytearray:
    at = data.find(chunk)
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0x01  # first byte of the chunk's CRC
    return data


def _bomb_header_png(path: Path, width: int, height: int) -> None:
    """A PNG header declaring width x height, with a token IDAT: a few hundred bytes on disk."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _corrupt_idat_png(path: Path) -> None:
    png = _png_with_text()
    idat = png.find(b"IDAT")
    png[idat + 40 : idat + 90] = bytes(50)  # inside the compressed pixels; every chunk CRC left as it was
    path.write_bytes(png)


def _symlink_loop(path: Path) -> None:
    os.symlink("loop2.jpg", path)
    os.symlink(path.name, path.parent / "loop2.jpg")


def _unix_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays after close


INF = RAMP.copy()
INF[3, 4] = np.inf
MIXED = RAMP.copy()
MIXED[0, :3], MIXED[1, :2] = -np.inf, np.nan

#: file (relative to the collection) -> (expected reason as a regex, or None: it embeds; how to make it)
CASES: dict[str, tuple[str | None, Callable[[Path], object]]] = {
    # pixels that decode to the wrong thing
    "inf.tif": (r"image has NaN/inf values: 0 NaN and 1 inf among 1,200 pixels",
                lambda p: Image.fromarray(INF, "F").save(p)),
    "nan.tif": (r"image has NaN/inf values: 1,200 NaN and 0 inf among 1,200 pixels",
                lambda p: Image.fromarray(np.full_like(RAMP, np.nan), "F").save(p)),
    "mixed.pfm": (r"image has NaN/inf values: 2 NaN and 3 inf among 1,200 pixels",
                  lambda p: Image.fromarray(MIXED, "F").save(p)),  # by its extension: a PFM float map
    "float.tif": (None, lambda p: Image.fromarray(RAMP, "F").save(p)),
    "int32.tif": (None, lambda p: Image.fromarray((RAMP * 1e6).astype(np.int32), "I").save(p)),
    "rgb_float.tif": (r"starts like a TIFF file but cannot be opened: unknown pixel mode",
                      lambda p: float_tiff(p, np.stack([INF] * 3, axis=-1))),
    "double.tif": (r"starts like a TIFF file but cannot be opened: unknown pixel mode",
                   lambda p: float_tiff(p, RAMP.astype(np.float64))),
    # memory: aspect ratio and size caps
    "wide.png": (WIDE_REASON, lambda p: Image.new("RGB", (40000, 8), (120, 80, 40)).save(p)),
    "tall.png": (r"aspect ratio 5,000:1 \(8x40000 pixels\)", lambda p: Image.new("RGB", (8, 40000)).save(p)),
    "wide.jpg": (r"aspect ratio 250:1 \(20000x80 pixels\)", lambda p: Image.new("RGB", (20000, 80)).save(p)),
    "scroll.png": (None, lambda p: Image.new("RGB", (4000, 200), (120, 80, 40)).save(p)),  # a 20:1 handscroll
    "bomb.png": (r"decompression bomb refused: 60000x60000", lambda p: _bomb_header_png(p, 60000, 60000)),
    # damaged files
    "crc_text.png": (r"damaged PNG: bad CRC in chunk tEXt",
                     lambda p: p.write_bytes(_flip_crc(_png_with_text(), b"tEXt"))),
    "crc_header.png": (r"damaged PNG: bad CRC in chunk IHDR",
                       lambda p: p.write_bytes(_flip_crc(_png_with_text(), b"IHDR"))),
    "corrupt_data.png": (r"damaged image data: broken data stream", _corrupt_idat_png),
    # paths that are not regular files
    "pipe.jpg": (r"^not a regular file \(FIFO\)$", os.mkfifo),
    "folder.jpg": (r"^not a regular file \(directory\)$", os.mkdir),
    "devnull.jpg": (r"^not a regular file \(character device\)$", lambda p: os.symlink("/dev/null", p)),
    "socket.jpg": (r"^not a regular file \(socket\)$", _unix_socket),
    "loop.jpg": (r"^symlink loop", _symlink_loop),
    "dangling.jpg": (r"^broken symlink: it points to 'nowhere.jpg', which does not exist$",
                     lambda p: os.symlink("nowhere.jpg", p)),
    "empty.png": (r"^empty file \(0 bytes\)$", lambda p: p.write_bytes(b"")),
    "scroll.png/inner.jpg": (r"^file not found: a folder on its path is a file$", lambda p: None),
}
REASONS = {name: reason for name, (reason, _) in CASES.items()}


@contextlib.contextmanager
def no_hang(seconds: int = 10):
    """Fail instead of hanging when a FIFO or device is read (SIGALRM interrupts a blocked open or read)."""
    def hung(*_):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for name, (_, make) in CASES.items():  # in order: scroll.png exists before scroll.png/inner.jpg
        make(folder / name)
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_embeds_or_fails_with_the_real_reason(hostile, name):
    reason = REASONS[name]
    with no_hang():
        if reason is None:
            assert load_image(hostile / name, draft_size=256).mode == "RGB"
            return
        with pytest.raises(ImageLoadError, match=reason):
            load_image(hostile / name, draft_size=256)


def test_finite_float_and_int32_keep_their_gradient(hostile):
    for name in ("float.tif", "int32.tif"):
        assert Image.open(hostile / name).mode in ("F", "I")
        grey = np.asarray(load_image(hostile / name))[..., 0].astype(int)
        assert grey[0, 0] == 0 and grey[-1, -1] == 255
        assert np.all(np.diff(grey.ravel()) >= 0)  # still a ramp, row after row


def test_the_aspect_cap_is_a_setting_and_a_scroll_embeds(hostile):
    assert DEFAULT_MAX_ASPECT >= 20  # a 20:1 handscroll (the Qingming scroll is 21:1) must embed
    assert load_image(hostile / "scroll.png", max_aspect=25).size == (4000, 200)
    with pytest.raises(ImageLoadError, match=r"aspect ratio 20:1 \(4000x200 pixels\) exceeds the limit of 10:1$"):
        load_image(hostile / "scroll.png", max_aspect=10)
    assert load_image(hostile / "wide.png", max_aspect=5000).size == (40000, 8)
    from featkit.errors import FeatkitError

    with pytest.raises(FeatkitError, match="max aspect must be at least 1"):
        ExtractSettings(max_aspect=0.5).validate()


def test_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    Image.new("RGB", (40, 30)).save(path)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: refuse the open the way the kernel would refuse a user
        real_open = os.open

        def denied(target, *args, **kwargs):
            if os.fspath(target) == str(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(target, *args, **kwargs)

        monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ImageLoadError, match=r"^cannot read file: permission denied$"):
        load_image(path)
    assert jpeg_bytes(path) is None  # the GPU route leaves it to PIL, which records the reason


def test_a_disk_error_mid_read_is_a_read_error_not_a_decode_error(tmp_path, monkeypatch):
    path = tmp_path / "sector.png"
    Image.fromarray((RAMP * 255).astype(np.uint8)).save(path)

    class BadSector(io.BufferedReader):
        def read(self, size=-1):
            if self.tell() > 40:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return super().read(size)

    monkeypatch.setattr(images, "open_image_file", lambda p: BadSector(io.FileIO(p)))
    with pytest.raises(ImageLoadError, match=r"^cannot read file: input/output error$"):
        load_image(path)


def test_a_format_this_pillow_cannot_decode_says_so(tmp_path, monkeypatch):
    Image.new("RGB", (32, 24), (10, 200, 30)).save(tmp_path / "photo.avif")
    monkeypatch.setattr(AvifImagePlugin, "SUPPORTED", False)  # a Pillow built without libavif
    with pytest.raises(ImageLoadError, match="unsupported image: .*AVIF support not installed"), \
            pytest.warns(UserWarning, match="AVIF support not installed"):  # Pillow's own, from Image.open
        load_image(tmp_path / "photo.avif")
    with pytest.raises(ImageLoadError, match="^invalid path: embedded null byte$"):
        load_image(str(tmp_path / "a\0b.jpg"))


# Runs in a child: decodes files as extraction does (load_image, then MobileNetV2's resize 256 + centre crop 224),
# printing the peak RSS before and after each file and the seconds each took. The first file is a tiny
# warm-up; files come in rising order of expected cost, so no earlier peak hides a later one.
_PROBE = """
import json, resource, sys, time
from featkit.backbones import Preprocess
from featkit.data.images import ImageLoadError, load_image
pre = Preprocess()
transform = pre.image_transform()
rows = []
for path in sys.argv[1:]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        shape, error = list(transform(load_image(path, draft_size=pre.resize_size)).shape), ""
    except ImageLoadError as err:
        shape, error = None, str(err)
    rows.append({"seconds": time.perf_counter() - start, "error": error, "shape": shape,
                 "before_kib": before, "after_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
print(json.dumps(rows))
"""


def test_hostile_sizes_fail_fast_within_bounded_memory(hostile, tmp_path):
    """Before the caps, wide.png alone raised the child's peak RSS by 1,330 MiB (2 s); now the refusals
    add ~1 MiB and take less time than decoding one ordinary 1500x1000 photo."""
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (32, 24)).save(tiny)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 1500, 3), dtype=np.uint8)).save(photo)
    at_cap = tmp_path / "at_cap.png"  # 200:1, the largest ratio that embeds: the worst resize intermediate
    Image.new("RGB", (20000, 100), (90, 90, 90)).save(at_cap)
    refused = [hostile / n for n in ("wide.png", "tall.png", "wide.jpg", "bomb.png")]
    paths = [tiny, *refused, at_cap, photo]
    out = subprocess.run([sys.executable, "-c", _PROBE, *map(str, paths)], capture_output=True, text=True,
                         timeout=120, env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    hostile_rows, cap_row, photo_row = rows[1:5], rows[5], rows[6]
    assert not photo_row["error"] and not cap_row["error"] and cap_row["shape"] == [3, 224, 224]
    assert [r["error"].split(" ")[0] for r in hostile_rows] == ["aspect", "aspect", "aspect", "decompression"]
    growth_mib = (hostile_rows[-1]["after_kib"] - hostile_rows[0]["before_kib"]) / 1024
    assert growth_mib < 16, f"refusing the hostile files raised peak RSS by {growth_mib:.0f} MiB"
    assert max(r["seconds"] for r in hostile_rows) < photo_row["seconds"]
    # 51,200x256 resized from 20000x100: ~52 MB in Pillow's 4-byte pixels plus the pass between
    # (measured +47 to +79 MiB)
    cap_mib = (cap_row["after_kib"] - cap_row["before_kib"]) / 1024
    assert cap_mib < 128, f"the largest image within the caps raised peak RSS by {cap_mib:.0f} MiB"


def test_the_jpeg_route_leaves_every_hostile_file_to_pil_with_the_same_reason(hostile, tmp_path):
    pre = Preprocess()
    paths = [str(hostile / name) for name in REASONS]
    pil = ImageDataset(paths, pre.image_transform(), pre.crop_size, draft_size=pre.resize_size)
    routed = EncodedDataset(paths, pil)
    with no_hang():
        for i, name in enumerate(REASONS):
            assert jpeg_bytes(paths[i]) is None, name
            assert routed[i][3] == pil[i][2], name
    # a long JPEG within the cap does take the nvjpeg route, and comes out as the PIL path's picture
    long = tmp_path / "long.jpg"
    Image.fromarray(np.tile(np.linspace(0, 255, 1600, dtype=np.uint8), (80, 1))).convert("RGB").save(long, quality=95)
    data = jpeg_bytes(long)
    assert data is not None
    (decoded,) = decode_resize([data], DecodeSpec.of(pre), torch.device("cpu"))
    assert (decoded.float() - pil.transform(load_image(long, draft_size=256)).float()).abs().mean() < 2


def test_extraction_records_every_hostile_failure_in_workers_on_both_decoder_paths(hostile, tmp_path):
    """The DataLoader worker (workers=1) survives every file; PIL and the JPEG-decoder path record the same."""
    config = write_manifest(hostile, [{"image": name, "kind": Path(name).suffix} for name in REASONS],
                            name="hostile", task="kind")
    bad = {name for name, reason in REASONS.items() if reason}
    stores = []
    for gpu_decode in (False, True):
        cfg = config.replace(store=tmp_path / f"decode-{gpu_decode}.h5")
        summary = Collection(cfg).extract_summary("mobilenet_v2", settings=ExtractSettings(
            progress=False, workers=1, batch_size=8, precision="fp32", gpu_decode=gpu_decode))
        assert (summary.computed, summary.failed, summary.remaining) == (len(REASONS) - len(bad), len(bad), 0)
        failures = FeatureStore(cfg.store_path).status(summary.key)["failures"]
        assert set(failures) == bad
        for name in bad:
            assert re.search(REASONS[name], failures[name]), (name, failures[name])
        stores.append(failures)
    assert stores[0] == stores[1]
