"""The workbench's JSON API through Starlette's TestClient: answers, review queues, corrections, safety.

The collection (tests/_serve.py) plants what the queues must find: three flipped glaze
labels, a byte-identical photo under another object id, a stray file in images/ that
is not in the manifest; its images/ folder is a symlink to another folder.
"""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pandas as pd
import pytest
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from _serve import collection_copy
from featkit.data.corrections import corrections_path, read_corrections
from featkit.serve.app import create_app
from featkit.serve.backend import Workbench, WorkbenchSettings, thumbnail_dir
from featkit.serve.server import bind
from featkit_cli.main import app as cli


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    config, facts = collection_copy(tmp_path_factory)
    workbench = Workbench(config, WorkbenchSettings(user="tester", max_upload_bytes=200_000))
    with TestClient(create_app(workbench), base_url="http://127.0.0.1") as client:
        yield config, facts, workbench, client


def _error(response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert text in response.json()["error"]


def test_meta_and_items_describe_the_map(served):
    config, facts, _, client = served
    manifest = facts["manifest"]
    meta = client.get("/api/meta").json()
    assert meta["tasks"] == ["form", "glaze", "decoration", "period"] and meta["keys"] == ["mobilenet_v2/imagenet1k_v1"]
    assert sum(c["count"] for c in meta["classes"]["glaze"]) == len(manifest)
    items = client.get("/api/items", params={"task": "glaze"}).json()
    cols = items["columns"]
    assert items["n"] == len(manifest) and all(len(v) == len(manifest) for v in cols.values() if v is not None)
    assert cols["split"] is None  # the collection has no split column
    given = dict(zip(manifest["image"], manifest["glaze"]))
    assert all(given[i] == y for i, y in zip(cols["id"], cols["label"]))
    assert items["run"] and sum(p is not None for p in cols["prediction"]) == len(manifest)  # 3-fold: all held out
    assert all(0 <= c <= 1 for c in cols["confidence"]) and {True, False} >= set(cols["correct"])
    assert cols["group"][cols["id"].index("images/obj-0003_v0.jpg")] == "obj-0003"
    no_run = client.get("/api/items", params={"task": "form"}).json()
    assert no_run["run"] is None and set(no_run["columns"]["prediction"]) == {None}
    clusters = client.get("/api/clusters").json()
    assert len(clusters["cluster"]) == len(manifest) and clusters["k"] >= 2


def test_detail_panel_has_labels_predictions_group_and_neighbours(served):
    _, facts, _, client = served
    row = facts["manifest"].set_index("image").loc["images/obj-0003_v0.jpg"]
    item = client.get("/api/item", params={"id": "images/obj-0003_v0.jpg"}).json()
    assert {t: v["label"] for t, v in item["tasks"].items()} == {t: row[t] for t in ("form", "glaze", "decoration",
                                                                                     "period")}
    pred = item["tasks"]["glaze"]["prediction"]
    assert pred["held_out"] and abs(sum(pred["probabilities"].values()) - 1) < 0.02 and pred["predicted"] in pred[
        "probabilities"]
    assert item["tasks"]["form"]["prediction"] is None  # no run for form
    assert item["same_group"] == ["images/obj-0003_v1.jpg"]
    scores = [n["score"] for n in item["neighbors"]]
    assert len(scores) == 8 and scores == sorted(scores, reverse=True)
    assert "images/obj-0003_v0.jpg" not in [n["id"] for n in item["neighbors"]]


def test_search_by_id_and_by_upload(served):
    config, facts, _, client = served
    original, copy = facts["duplicate"]
    hits = client.get("/api/similar", params={"id": copy, "k": 5}).json()["results"]
    assert hits[0]["id"] == original and hits[0]["score"] > 0.999
    glaze = facts["manifest"].set_index("image").loc[original, "glaze"]
    only = client.get("/api/similar", params={"id": copy, "k": 4, "task": "period", "label": "song"}).json()
    assert len(only["results"]) == 4 and {r["labels"]["period"] for r in only["results"]} == {"song"}
    data = (config.root / original).read_bytes()
    up = client.post("/api/similar", params={"k": 3}, files={"file": ("mine.jpg", data, "image/jpeg")}).json()
    assert {r["id"] for r in up["results"][:2]} == {original, copy} and up["results"][0]["score"] > 0.999
    assert up["query"] == {"upload": "mine.jpg"} and up["results"][0]["labels"]["glaze"] == glaze
    raw = client.post("/api/similar", content=data, headers={"content-type": "image/jpeg"}).json()
    assert raw["results"][0]["id"] in (original, copy)


def test_bad_uploads_get_4xx_with_the_reason(served, tmp_path):
    _, _, _, client = served
    _error(client.post("/api/similar", files={"file": ("x.jpg", b"just some notes", "image/jpeg")}), 422,
           "not an image")
    _error(client.post("/api/similar", files={"file": ("x.gif", b"GIF89a not really", "image/gif")}), 422,
           "starts like a GIF")
    _error(client.post("/api/similar", files={"file": ("x.jpg", b"", "image/jpeg")}), 400, "empty")
    _error(client.post("/api/similar", files={"file": ("x.jpg", b"\xff" * 300_000, "image/jpeg")}), 413, "limit")
    bomb = io.BytesIO()
    Image.new("1", (14_000, 14_000)).save(bomb, format="PNG")  # 196 Mpx in a few kB
    _error(client.post("/api/similar", files={"file": ("bomb.png", bomb.getvalue(), "image/png")}), 422,
           "decompression bomb")
    _error(client.post("/api/similar", content=b"{}", headers={"content-type": "application/json"}), 415, "upload")
    _error(client.post("/api/similar", data={"other": "x"}, files={"nope": ("a", b"1")}), 400, "no file field")


def test_review_queues_find_what_was_planted(served, tmp_path):
    config, facts, workbench, client = served
    issues = client.get("/api/review/label-issues", params={"task": "glaze"}).json()
    suggested = {i["id"]: (i["given"], i["suggested"]) for i in issues["items"]}
    found = [image for image, flip in facts["flipped"].items() if suggested.get(image) == flip]
    assert len(found) >= 2, (suggested, facts["flipped"])  # the held-out head must see the true glaze
    assert "out-of-fold probabilities of fit run" in issues["source"]
    uncertain = client.get("/api/review/uncertain", params={"task": "glaze"}).json()
    review = json.loads((config.runs_dir / uncertain["run"] / "report.json").read_text())["review"]
    assert uncertain["threshold"] == review["threshold"] and "review threshold of fit run" in uncertain["threshold_source"]
    assert len(uncertain["items"]) == review["sent_to_review"] > 0  # the fit's out-of-fold rows below it
    assert all(i["score"] < review["threshold"] for i in uncertain["items"])
    assert [i["score"] for i in uncertain["items"]] == sorted(i["score"] for i in uncertain["items"])
    original, copy = facts["duplicate"]
    leaks = client.get("/api/review/leaks", params={"task": "glaze"}).json()["items"]
    assert {leaks[0]["id"], leaks[0]["other"]} == {original, copy} and "group" in leaks[0]["reason"]
    outliers = client.get("/api/review/outliers", params={"task": "glaze"}).json()["items"]
    assert len(outliers) > 10 and [o["score"] for o in outliers] == sorted((o["score"] for o in outliers), reverse=True)
    _error(client.get("/api/review/uncertain", params={"task": "form"}), 404, "featkit fit --task form")
    _error(client.get("/api/review/everything"), 404, "valid choices")


def test_the_review_threshold_of_the_fit_report_is_used(served):
    config, _, workbench, client = served
    report_path = next((config.root / "runs").glob("*/report.json"))
    report = json.loads(report_path.read_text())
    report["review"] = {"threshold": 0.97}
    report_path.write_text(json.dumps(report))  # a newer report: the queue is rebuilt
    try:
        uncertain = client.get("/api/review/uncertain", params={"task": "glaze"}).json()
        assert uncertain["threshold"] == 0.97 and report_path.parent.name in uncertain["threshold_source"]
        assert all(i["score"] < 0.97 for i in uncertain["items"]) and uncertain["total"] > 7
    finally:
        del report["review"]
        report_path.write_text(json.dumps(report))


def test_corrections_are_appended_and_shown(served):
    config, _, _, client = served
    image = "images/obj-0005_v0.jpg"
    manifest = (config.root / "labels.csv").read_bytes()
    before = client.get("/api/item", params={"id": image}).json()["tasks"]["glaze"]["label"]
    row = client.post("/api/corrections", json={"id": image, "task": "glaze", "label": "tea_dust",
                                                "queue": "label-issues"}).json()
    assert (row["old"], row["new"], row["user"], row["queue"]) == (before, "tea_dust", "tester", "label-issues")
    client.post("/api/corrections", json={"id": image, "task": "period", "label": None})
    client.post("/api/corrections", json={"id": image, "task": "form", "label": "amphora"})
    decisions = read_corrections(corrections_path(config))
    assert dict(zip(decisions["task"], decisions["new"])) == {"glaze": "tea_dust", "period": "", "form": "amphora"}
    item = client.get("/api/item", params={"id": image}).json()["tasks"]
    assert item["glaze"]["label"] == "tea_dust" and item["glaze"]["correction"]["old"] == before
    assert item["period"]["label"] is None and item["form"]["label"] == "amphora"
    cols = client.get("/api/items", params={"task": "glaze"}).json()["columns"]
    assert cols["label"][cols["id"].index(image)] == "tea_dust" and cols["corrected"][cols["id"].index(image)]
    review = client.get("/api/review/uncertain", params={"task": "glaze"}).json()
    assert all((i["decision"] is not None) == (i["id"] == image) for i in review["items"])
    listed = client.get("/api/corrections").json()["corrections"]
    assert {c["task"] for c in listed if c["id"] == image} == {"glaze", "period", "form"}
    assert (config.root / "labels.csv").read_bytes() == manifest  # never edited


def test_bad_correction_bodies_get_4xx_json(served):
    _, _, _, client = served
    good = {"id": "images/obj-0001_v0.jpg", "task": "glaze", "label": "celadon"}
    _error(client.post("/api/corrections", json={**good, "id": "images/nope.jpg"}), 404, "not in collection")
    _error(client.post("/api/corrections", json={**good, "task": "colour"}), 404, "valid choices")
    _error(client.post("/api/corrections", json={"id": good["id"], "task": "glaze"}), 400, "needs label")
    _error(client.post("/api/corrections", json={**good, "label": "a\nb"}), 400, "one line")
    _error(client.post("/api/corrections", json={**good, "label": 3}), 400, "string")
    _error(client.post("/api/corrections", json={**good, "colour": 1}), 400, "unknown field")
    _error(client.post("/api/corrections", json={**good, "queue": "elsewhere"}), 400, "valid choices")
    _error(client.post("/api/corrections", content=b"{oops", headers={"content-type": "application/json"}), 400,
           "not valid JSON")
    _error(client.post("/api/corrections", content=b"[1]", headers={"content-type": "application/json"}), 400,
           "JSON object")
    _error(client.post("/api/corrections", data={"id": "x"}), 415, "application/json")
    _error(client.get("/api/similar", params={"id": "images/obj-0001_v0.jpg", "k": "many"}), 400, "whole number")
    _error(client.get("/api/similar", params={"id": "images/obj-0001_v0.jpg", "label": "celadon"}), 400,
           "needs a task")
    _error(client.get("/api/similar"), 400, "image id")
    _error(client.get("/api/items", params={"task": "colour"}), 404, "valid choices")
    _error(client.get("/api/items", params={"key": "resnet50/x"}), 404, "store group")
    _error(client.get("/api/item", params={"id": "nope"}), 404, "not in collection")
    _error(client.post("/api/export", json={"ids": []}), 400, "non-empty list")
    _error(client.post("/api/export", json={"ids": ["nope"]}), 404, "not in collection")


def test_export_of_a_selection_is_a_corrected_manifest(served):
    _, facts, _, client = served
    ids = ["images/obj-0002_v1.jpg", "images/obj-0002_v0.jpg"]
    client.post("/api/corrections", json={"id": ids[0], "task": "decoration", "label": "waves"})
    response = client.post("/api/export", json={"ids": ids})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(response.text), dtype=str)
    assert frame["image"].tolist() == sorted(ids) and list(frame.columns) == list(facts["manifest"].columns)
    assert frame.set_index("image").loc[ids[0], "decoration"] == "waves"


def test_images_by_id_only_and_thumbnails_cached(served):
    config, facts, workbench, client = served
    assert (config.root / "images").is_symlink()
    image = "images/obj-0007_v1.jpg"
    full = client.get(f"/images/{image}")
    assert full.status_code == 200 and full.content == (config.root / image).read_bytes()
    thumb = client.get(f"/images/{image}", params={"thumb": 1})
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= workbench.settings.thumb_size
    cached = list(thumbnail_dir(config, workbench.settings.thumb_size).glob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == thumb.content
    stamp = cached[0].stat().st_mtime_ns
    assert client.get(f"/images/{image}", params={"thumb": 1}).content == thumb.content
    assert cached[0].stat().st_mtime_ns == stamp  # made once
    for path in ("/images/../featkit.toml", "/images/%2e%2e/featkit.toml", "/images/..%2Ffeatkit.toml",
                 "/images/images/..%2F..%2Fcollection%2Ffeatkit.toml", "/images/%252e%252e%252ffeatkit.toml",
                 "/images//etc/passwd", "/images/%2Fetc%2Fpasswd", f"/images/{facts['stray']}",
                 "/images/images/nope.jpg", "/images/labels.csv"):
        response = client.get(path)  # routed to the image (unknown id) or to nothing: 404 either way
        assert response.status_code == 404 and response.json()["error"], path


def test_another_host_needs_the_token_and_local_servers_refuse_other_hosts(served):
    config, _, workbench, _ = served
    with TestClient(create_app(workbench, token="s3cret", local=False), base_url="http://10.0.0.5") as remote:
        _error(remote.get("/api/meta"), 401, "token")
        _error(remote.get("/images/images/obj-0001_v0.jpg"), 401, "token")
        _error(remote.get("/api/meta", params={"token": "wrong"}), 401, "token")
        first = remote.get("/", params={"token": "s3cret"})
        assert first.status_code == 200 and "featkit_token=s3cret" in first.headers["set-cookie"]
        assert remote.get("/api/meta").status_code == 200  # the cookie now
        remote.cookies.clear()
        assert remote.get("/api/meta", headers={"authorization": "Bearer s3cret"}).status_code == 200
    with TestClient(create_app(workbench), base_url="http://evil.example") as rebound:
        _error(rebound.get("/api/meta"), 403, "127.0.0.1")
    with TestClient(create_app(workbench), base_url="http://localhost:8765") as local:
        assert local.get("/api/meta").status_code == 200
        page = local.get("/")
        assert page.status_code == 200 and "regl-scatterplot" in page.text
        assert local.get("/static/vendor/regl-scatterplot.esm.js").status_code == 200
        assert local.get("/static/../backend.py").status_code == 404


def test_two_tabs_deciding_at_once_lose_nothing(served):
    """A real uvicorn server, 8 concurrent clients, 120 decisions: all in the file."""
    import uvicorn

    config, _, workbench, _ = served
    path = corrections_path(config)
    before = len(read_corrections(path, latest=False))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(workbench), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ids = pd.read_csv(config.root / "labels.csv", dtype=str)["image"].tolist()[:120]

    def decide(image_id: str) -> int:
        with httpx2.Client(base_url=url, timeout=30) as tab:
            return tab.post("/api/corrections", json={"id": image_id, "task": "period", "label": "yuan",
                                                      "queue": "detail"}).status_code

    try:
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(decide, ids)) == {200}
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    history = read_corrections(path, latest=False)
    assert len(history) == before + len(ids)
    assert set(history["id"][before:]) == set(ids) and (history["new"][before:] == "yuan").all()


def test_serve_command_refuses_a_busy_port(served):
    config, _, _, _ = served
    sock = bind("127.0.0.1", 0)
    try:
        result = CliRunner().invoke(cli, ["serve", "--config", str(config.root), "--port",
                                          str(sock.getsockname()[1]), "--no-open"])
    finally:
        sock.close()
    assert result.exit_code == 2 and "in use" in " ".join(result.output.split())
