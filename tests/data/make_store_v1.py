"""Writes tests/data/store_v1/: a store as featkit wrote it before segments existed, for test_store_v1.py.

    git show 21de5c5:featkit/store.py > /tmp/store_v1.py
    python tests/data/make_store_v1.py /tmp/store_v1.py

Two groups in one .h5 (variable-length ids, no checksums): ``toy/v1`` (float32: rows
2-4 and 10-13 done, img/007 failed, an aux array) and ``toy/half`` (float16, all done),
plus the log of a writer that died after logging rows 5-6 of ``toy/v1`` (FKW1 records).
Row values follow ``value(id, k) = int(id[4:7]) + k / 10``, as in test_store_v1.py.
"""

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

DIM = 6
IDS = [f"img/{i:03d}.jpg" for i in range(20)]


def feats(ids):
    return np.array([[int(i[4:7]) + k / 10 for k in range(DIM)] for i in ids], np.float32)


def main(module_path: str) -> None:
    spec = importlib.util.spec_from_file_location("store_v1", module_path)
    old = sys.modules["store_v1"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    pre = {"crop_size": 224, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406], "resize_size": 256,
           "std": [0.229, 0.224, 0.225]}

    def meta(variant, dtype):
        return old.GroupMeta(backbone="toy", variant=variant, weights="v1", weights_sha256="ab" * 32, preprocess=pre,
                             preprocess_fingerprint="679c8bc319961c08", dim=DIM, dtype=dtype,
                             extra={"manifest_hash": "m1"})

    out = Path(__file__).resolve().parent / "store_v1"
    with tempfile.TemporaryDirectory() as tmp:
        store = old.FeatureStore(Path(tmp) / "v1.h5")
        with store.writer() as w:
            w.ensure_group(meta("v1", "float32"), IDS)
            w.ensure_group(meta("half", "float16"), IDS)
            done = IDS[2:5] + IDS[10:14]
            w.write_rows("toy/v1", done, feats(done), failures=[(IDS[7], "truncated image: bad")])
            w.write_rows("toy/half", IDS, feats(IDS))
            w.write_aux("toy/v1", "umap_2d", np.arange(40, dtype=np.float32).reshape(20, 2), {"n_neighbors": 15})
        w = store.writer().__enter__()  # a writer that dies after logging a batch: its log is all that is left
        w.write_rows("toy/v1", IDS[5:7], feats(IDS[5:7]))
        out.mkdir(exist_ok=True)
        for path in (store.path, store.wal_path):
            shutil.copyfile(path, out / path.name)


if __name__ == "__main__":
    main(sys.argv[1])
