"""The GPU extraction path (issue 6, item 1).

On the CPU the same code runs with torchvision's libjpeg decoder, which checks what
matters without a GPU: which files take the nvjpeg route, that every other file goes
through the PIL path and fails with exactly the same recorded reason, and that the
features agree with the PIL path. Tests marked ``gpu`` run the real nvjpeg path,
torch.compile and TTA on CUDA, and skip without it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _manifest import write_manifest

from featkit.backbones import Preprocess
from featkit.config import Config
from featkit.extract import ExtractSettings
from featkit.extract.gpu import DecodeSpec, decode_resize, gpu_decode_wanted, jpeg_bytes, prefetched, resize_crop
from featkit.api import Collection
from featkit.store import FeatureStore

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Config:
    """Rendered vessels as JPEG, plus every kind of file the nvjpeg route must not take."""
    from featkit.demo import make_demo_collection

    root = tmp_path_factory.mktemp("mixed")
    make_demo_collection(root, n_objects=4, size=200)
    images = sorted((root / "images").glob("*.jpg"))
    base = Image.open(images[0]).convert("RGB")
    data = images[1].read_bytes()
    scan = data.find(b"\xff\xda")
    extra = {
        "grey.jpg": lambda p: base.convert("L").save(p, quality=90),
        "cmyk.jpg": lambda p: base.convert("CMYK").save(p, quality=90),
        "photo.png": lambda p: base.save(p),
        "rotated.jpg": lambda p: base.save(p, quality=90, exif=_exif_rotated()),
        "truncated.jpg": lambda p: p.write_bytes(data[: len(data) // 2]),
        "corrupt.jpg": lambda p: p.write_bytes(data[: scan + 40] + bytes(range(256)) * 4 + data[scan + 1064 :]),
        "empty.jpg": lambda p: p.write_bytes(b""),
        "notes.jpg": lambda p: p.write_text("not an image"),
    }
    for name, make in extra.items():
        make(root / "images" / name)
    rows = [{"image": f"images/{p.name}", "kind": p.suffix} for p in sorted((root / "images").iterdir())]
    return write_manifest(root, rows, name="mixed", task="kind")


def _exif_rotated() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    return exif


def test_only_plain_complete_jpegs_take_the_nvjpeg_route(mixed):
    folder = mixed.root / "images"
    route = {p.name: jpeg_bytes(p) is not None for p in folder.iterdir()}
    assert route.pop("grey.jpg") and all(route.pop(p.name) for p in folder.glob("obj-*.jpg"))
    assert route.pop("corrupt.jpg")  # looks complete; the decoder finds out, then PIL says why
    assert not any(route.values()), route  # png, cmyk, rotated, truncated, empty, text: the PIL path
    assert route.keys() == {"cmyk.jpg", "photo.png", "rotated.jpg", "truncated.jpg", "empty.jpg", "notes.jpg"}
    assert jpeg_bytes(folder / "grey.jpg", max_pixels=100) is None  # over the pixel ceiling: PIL refuses it


def test_a_corrupt_jpeg_in_a_batch_fails_alone(mixed):
    """One undecodable file makes the batched call fail; the retry isolates it."""
    folder = mixed.root / "images"
    good, bad = (jpeg_bytes(folder / name) for name in ("grey.jpg", "corrupt.jpg"))
    out = decode_resize([good, bad, good], DecodeSpec(resize_size=32, size=24), torch.device("cpu"))
    assert out[1] is None and out[0].shape == out[2].shape == (3, 24, 24)
    pil = Preprocess(crop_size=24, resize_size=32).image_transform()(Image.open(folder / "grey.jpg").convert("RGB"))
    assert (out[0].float() - pil.float()).abs().mean() < 3  # the same picture as the PIL path gives


def test_prefetching_thread_keeps_order_passes_errors_and_stops_early():
    def batches(fail_after: int | None):
        for k in range(5):
            if k == fail_after:
                raise OSError("disk went away")
            yield torch.tensor([k]), torch.zeros(1, 3, 2, 2, dtype=torch.uint8), [""]

    cpu = torch.device("cpu")
    assert [int(b[0]) for b in prefetched(batches(None), cpu)] == [0, 1, 2, 3, 4]
    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for b in prefetched(batches(3), cpu):
            seen.append(int(b[0]))
    assert seen == [0, 1, 2]
    early = prefetched(batches(None), cpu)
    assert int(next(early)[0]) == 0
    early.close()  # the consumer stopped: the thread is told to stop and joined
    assert not any(t.name == "featkit-decode" and t.is_alive() for t in threading.enumerate())


def test_same_sized_images_are_resized_together_like_one_by_one():
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.integers(0, 255, (3, h, w), dtype=np.uint8)) for h, w in
              ((60, 80), (60, 80), (90, 50))] + [None]
    spec = DecodeSpec(resize_size=32, size=28)
    together = resize_crop(images, spec)
    assert together[3] is None
    for img, out in zip(images[:3], together):
        alone = resize_crop([img], spec)[0]
        assert out.shape == (3, 28, 28) and torch.equal(out, alone)


def test_auto_means_on_for_cuda_only():
    assert gpu_decode_wanted(None, torch.device("cuda")) and not gpu_decode_wanted(None, torch.device("cpu"))
    assert not gpu_decode_wanted(False, torch.device("cuda")) and gpu_decode_wanted(True, torch.device("cpu"))


def _extract(config: Config, tmp_path: Path, name: str, **settings):
    cfg = config.replace(store=tmp_path / f"{name}.h5")
    summary = Collection(cfg).extract_summary("mobilenet_v2",
                                 settings=ExtractSettings(progress=False, workers=0, batch_size=8, **settings))
    return summary, FeatureStore(cfg.store_path)


def test_decoder_path_records_the_same_failures_and_features_as_pil(mixed, tmp_path):
    pil, pil_store = _extract(mixed, tmp_path, "pil", precision="fp32", gpu_decode=False)
    dec, dec_store = _extract(mixed, tmp_path, "dec", precision="fp32", gpu_decode=True)
    assert pil.key == dec.key and (pil.computed, pil.failed) == (dec.computed, dec.failed) == (12, 4)
    a, b = pil_store.status(pil.key), dec_store.status(dec.key)
    assert list(a["ids"]) == list(b["ids"]) and (a["done"] == b["done"]).all()
    assert a["failures"] == b["failures"]
    assert set(a["failures"]) == {"images/truncated.jpg", "images/corrupt.jpg", "images/empty.jpg",
                                  "images/notes.jpg"}
    x, y = pil_store.load(pil.key), dec_store.load(dec.key)
    assert list(x.ids) == list(y.ids)
    assert _cosine(x.X, y.X).min() > 0.999  # libjpeg + tensor resize vs PIL: the same picture


@pytest.mark.gpu
@cuda
def test_nvjpeg_path_on_cuda_matches_the_cpu_path(mixed, tmp_path):
    cpu, cpu_store = _extract(mixed, tmp_path, "cpu", device="cpu", precision="fp32")
    gpu, gpu_store = _extract(mixed, tmp_path, "gpu", device="cuda", precision="fp32", gpu_decode=True)
    assert cpu_store.status(cpu.key)["failures"] == gpu_store.status(gpu.key)["failures"]
    x, y = cpu_store.load(cpu.key), gpu_store.load(gpu.key)
    assert list(x.ids) == list(y.ids) and _cosine(x.X, y.X).min() > 0.995


@pytest.mark.gpu
@cuda
def test_compile_and_tta_on_cuda(mixed, tmp_path):
    plain, store = _extract(mixed, tmp_path, "plain", device="cuda", precision="fp32")
    compiled, cstore = _extract(mixed, tmp_path, "compiled", device="cuda", precision="fp32", compile=True)
    assert _cosine(cstore.load(compiled.key).X, store.load(plain.key).X).min() > 0.999  # TF32 convs differ a little
    tta, tstore = _extract(mixed, tmp_path, "plain", device="cuda", precision="bf16", tta="hflip+crops")
    assert tta.key.endswith("+tta-hflip+crops") and tta.computed == plain.computed
    assert _cosine(tstore.load(tta.key).X, store.load(plain.key).X).min() > 0.9
