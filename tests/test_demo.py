"""The embedded default collection (issue 2, item 9): deterministic, correlated, and it runs."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from scipy.stats import chi2_contingency
from typer.testing import CliRunner

from featkit.demo import demo_objects, make_demo_collection
from featkit_cli.main import app


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_collection_is_deterministic(tmp_path):
    a = make_demo_collection(tmp_path / "a", n_objects=15)
    b = make_demo_collection(tmp_path / "b", n_objects=15)
    fa, fb = _files(a.parent), _files(b.parent)
    assert len(fa) == 31  # 30 images + labels.csv
    assert fa == fb
    other = _files(make_demo_collection(tmp_path / "c", n_objects=15, seed=1).parent)
    assert other["labels.csv"] != fa["labels.csv"]


def test_demo_attributes_are_correlated_and_imbalanced():
    objects = demo_objects(400)
    periods = sorted({o.period for o in objects})
    glazes = sorted({o.glaze for o in objects})
    table = np.array([[sum(o.period == p and o.glaze == g for o in objects) for g in glazes] for p in periods])
    chi2, p_value, _, _ = chi2_contingency(table)
    cramers_v = np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1)))
    assert p_value < 1e-10 and cramers_v > 0.4, (p_value, cramers_v)
    forms = Counter(o.form for o in objects)
    assert max(forms.values()) > 2.5 * min(forms.values())  # imbalanced like a real collection
    assert len(periods) == 4 and len(glazes) == 5


def test_featkit_demo_runs_the_main_job(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--objects", "20", "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    ex = results["extract"]
    assert results["images"] == 40
    assert (ex["key"], ex["computed"], ex["failed"], ex["remaining"]) == ("mobilenet_v2/imagenet1k_v1", 40, 0, 0)
    group = results["store"]["groups"][0]
    assert group["done"] == 40 and group["weights_sha256"].startswith("b0353104")
    assert (out / "featkit.toml").is_file() and (out / "features" / "vessels.h5").is_file()
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0] == "image,form,glaze,decoration,period,object_id" and len(labels) == 41


def test_an_interrupted_render_leaves_no_half_image(tmp_path, monkeypatch):
    """A rerun reuses images already there, so one cut off mid-write must never be there."""
    from PIL import Image

    real_save = Image.Image.save
    calls = []

    def dying_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:  # the third image: write a little, then die
            with open(fp, "wb") as fh:
                fh.write(b"\xff\xd8\xff\xe0 half")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    try:
        make_demo_collection(tmp_path / "a", n_objects=4)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert len(list((tmp_path / "a" / "images").glob("*.jpg"))) == 2
    make_demo_collection(tmp_path / "a", n_objects=4)
    make_demo_collection(tmp_path / "b", n_objects=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # the rerun finished it, byte for byte
