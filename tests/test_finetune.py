"""Fine-tuning: settings, blocks, loss, splits, a short real run, resume, the variant in the store, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featkit.backbones import create_backbone, list_backbones
from featkit.backbones.weights import file_sha256
from featkit.config import Config
from featkit.data import load_manifest
from featkit.errors import FeatkitError
from featkit.finetune import Augment, FinetuneSettings, finetune, run_paths
from featkit.finetune.blocks import block_parameters, set_trainable, trunk_blocks
from featkit.finetune.model import IGNORE, MultiTaskLoss, MultiTaskNet, class_weights
from featkit.finetune.runs import settings_from_flags
from featkit.finetune.settings import parse_cascade, parse_task_weights
from featkit.finetune.splits import make_split

# A tiny, fast, deterministic configuration: 64-px crops, last 3 MobileNetV2 blocks, no augmentation.
QUICK = FinetuneSettings(tasks=("glaze", "form"), epochs=3, batch_size=16, image_size=64, train_blocks=3, lr=3e-3, trunk_lr_scale=0.1,
                         warmup_epochs=0, schedule="constant", augment=Augment.from_names(()), patience=0,
                         precision="fp32", workers=0, cache_images=True, progress=False)


def _copy_config(config: Config, tmp_path: Path, **extra_columns) -> Config:
    """The demo collection under ``tmp_path`` (images shared by relative path), plus constant columns."""
    with open(config.manifest_path) as fh:
        rows = list(csv.DictReader(fh))
    (tmp_path / "images").symlink_to(config.root / "images")
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], *extra_columns])
        writer.writeheader()
        writer.writerows({**r, **extra_columns} for r in rows)
    return Config(root=tmp_path, name="vessels", manifest=Path("labels.csv"),
                  tasks=(*config.tasks, *extra_columns), group="object_id")


@pytest.fixture(scope="module")
def trained(demo_config, tmp_path_factory):
    """Three real epochs on the demo vessels (glaze + form), in a private copy of the collection."""
    config = _copy_config(demo_config, tmp_path_factory.mktemp("ft"))
    collection = load_manifest(config)
    result = finetune(config, collection, settings=QUICK)
    return config, collection, result


# -- settings ------------------------------------------------------------------------------
def test_settings_round_trip_json(tmp_path):
    s = QUICK.replace(cascade=(("glaze", "form"),), task_weights=(("form", 2.0),),
                      augment=Augment.from_names(["hflip", "erasing"]), class_weights="effective")
    s.validate()
    s.save(tmp_path / "settings.json")
    assert FinetuneSettings.load(tmp_path / "settings.json") == s
    assert s.augment.names == ("hflip", "erasing")


@pytest.mark.parametrize("changes, message", [
    ({"tasks": ()}, "no tasks"),
    ({"cascade": (("glaze", "ware"),)}, "'ware', which is not among the tasks"),
    ({"cascade": (("glaze", "form"), ("form", "glaze"))}, "cycle"),
    ({"cascade": (("glaze", "glaze"),)}, "cannot feed itself"),
    ({"optimizer": "sgd"}, "valid choices: adam, adamw"),
    ({"class_weights": "inverse"}, "valid choices: balanced, effective, none"),
    ({"task_weights": (("ware", 2.0),)}, "unknown task in task weights 'ware'"),
    ({"dropout": 1.5}, "dropout must be between"),
    ({"run": "../escape"}, "run name"),
])
def test_settings_refuse_bad_values(changes, message):
    with pytest.raises(FeatkitError, match=message.replace("(", r"\(")):
        QUICK.replace(**changes).validate()


def test_flag_parsers_name_the_bad_value():
    assert parse_cascade(["period:glaze"]) == [("period", "glaze")]
    assert parse_task_weights("glaze=2, form=0.5") == (("glaze", 2.0), ("form", 0.5))
    with pytest.raises(FeatkitError, match="'period' must be parent:child"):
        parse_cascade(["period"])
    with pytest.raises(FeatkitError, match="'glaze=lots' must be task=number"):
        parse_task_weights("glaze=lots")
    with pytest.raises(FeatkitError, match="valid choices: crop, erasing, hflip, jitter, rotation"):
        Augment.from_names(["mixup"])


# -- blocks --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_cuts_into_blocks_that_freeze(name):
    net = create_backbone(name, weights="random")
    blocks = trunk_blocks(net)  # raises unless every parameter is in exactly one block
    assert len(blocks) >= 5
    set_trainable(blocks, 2)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == {id(p) for b in blocks[-2:] for p in block_parameters(b)}


# -- model and loss ------------------------------------------------------------------------
def test_unknown_labels_are_masked_out_of_their_task_only():
    torch.manual_seed(0)
    logits = {"a": torch.randn(4, 3, requires_grad=True), "b": torch.randn(4, 2, requires_grad=True)}
    targets = torch.tensor([[0, IGNORE], [2, IGNORE], [IGNORE, 1], [1, IGNORE]])
    total, per_task, counts = MultiTaskLoss(("a", "b"))(logits, targets)
    expected_a = torch.nn.functional.cross_entropy(logits["a"][[0, 1, 3]], torch.tensor([0, 2, 1]))
    expected_b = torch.nn.functional.cross_entropy(logits["b"][[2]], torch.tensor([1]))
    assert counts == {"a": 3, "b": 1}
    assert torch.allclose(total, expected_a + expected_b)
    total.backward()
    assert torch.all(logits["a"].grad[2] == 0) and torch.all(logits["b"].grad[[0, 1, 3]] == 0)
    # a task with no labelled row in the batch adds nothing
    total, per_task, _ = MultiTaskLoss(("a", "b"))(logits, torch.tensor([[0, IGNORE]] * 4))
    assert set(per_task) == {"a"}


def test_uncertainty_weighting_learns_a_weight_per_task():
    loss = MultiTaskLoss(("a", "b"), uncertainty=True, task_weights={"b": 2.0})
    logits = {"a": torch.randn(6, 3), "b": torch.randn(6, 2)}
    targets = torch.tensor([[i % 3, i % 2] for i in range(6)])
    total, per_task, _ = loss(logits, targets)
    assert torch.allclose(total, per_task["a"] + 2.0 * per_task["b"])  # s = 0: exp(-s) = 1
    total.backward()
    assert loss.log_vars.grad is not None and torch.all(loss.log_vars.grad != 0)


def test_class_weights_counter_imbalance():
    y = np.array([0] * 8 + [1] * 2 + [IGNORE] * 5)
    balanced = class_weights(y, 3, "balanced")
    assert balanced[1] / balanced[0] == pytest.approx(4.0) and balanced[2] == 0  # class 2 absent from training
    effective = class_weights(y, 3, "effective")
    assert effective[1] > effective[0] and float(effective.sum()) == pytest.approx(2.0)
    assert class_weights(y, 3, "none") is None


def test_cascade_feeds_parent_probabilities_to_the_child():
    trunk = create_backbone("resnet18", weights="random")
    net = MultiTaskNet(trunk, {"make": ("a", "b", "c"), "model": ("x", "y")}, cascade=(("make", "model"),))
    assert net.head("model").in_features == trunk.dim + 3 and net.head("make").in_features == trunk.dim
    net.eval()
    emb = torch.randn(2, trunk.dim)
    out = net.forward_heads(emb)
    with torch.no_grad():  # the child's output moves when only the parent head changes
        net.head("make").bias += torch.tensor([5.0, -5.0, 0.0])
    assert not torch.allclose(net.forward_heads(emb)["model"], out["model"])


# -- splits --------------------------------------------------------------------------------
def test_holdout_never_splits_a_group(demo_config):
    collection = load_manifest(demo_config)
    split = make_split(collection, "glaze", val_fraction=0.15, test_fraction=0.2, seed=0)
    parts = [set(collection.groups[getattr(split, p)]) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(split.sizes().values()) == len(collection)
    assert 0.1 < split.sizes()["test"] / len(collection) < 0.35


def test_published_train_val_split_holds_out_val(demo_config, tmp_path):
    config = _copy_config(demo_config, tmp_path)
    with open(config.manifest_path) as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["split"] = "val" if int(r["object_id"].split("-")[1]) % 5 == 0 else "train"
    with open(config.manifest_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    collection = load_manifest(config.replace(split="split"))
    split = make_split(collection, "glaze")
    ids = np.asarray(collection.ids)
    assert {i for i in ids[split.test]} == {r["image"] for r in rows if r["split"] == "val"}
    assert len(split.val) and not set(collection.groups[split.val]) & set(collection.groups[split.train])


# -- a real run ----------------------------------------------------------------------------
def test_finetune_loss_falls_and_reports_like_fit(trained):
    config, _, result = trained
    paths = run_paths(config, result.run)
    history = json.loads(paths.history.read_text())
    assert len(history) == 3
    for task in ("glaze", "form"):
        assert history[-1]["train_loss"][task] < history[0]["train_loss"][task]
    report = json.loads(paths.report.read_text())
    assert report == result.report and report["variant"] == "finetuned-glaze+form"
    for entry in report["tasks"]:
        assert entry["clf"] == "finetune" and entry["backbone"] == "mobilenet_v2"
        assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(entry["metrics"])
        assert sum(c["support"] for c in entry["per_class"].values()) == entry["n_test"] == report["split"]["test"]
    glaze = next(r for r in report["tasks"] if r["task"] == "glaze")
    assert glaze["metrics"]["balanced_accuracy"] > 0.4  # five glazes: chance is 0.2
    assert paths.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert FinetuneSettings.load(paths.settings) == QUICK
    with open(paths.predictions) as fh:
        assert len(list(csv.DictReader(fh))) == report["split"]["test"]


def test_finetuned_variant_goes_into_the_store(trained):
    from featkit.api import Collection
    from featkit.backbones import load_backbone
    from featkit.embeddings import resolve_key
    from featkit.extract import ExtractSettings
    from featkit.store import FeatureStore

    config, collection, result = trained
    summary = Collection(config).extract_summary("mobilenet_v2", variant="finetuned-glaze+form",
                                 settings=ExtractSettings(progress=False, workers=0, precision="fp32"))
    assert summary.key == "mobilenet_v2/finetuned-glaze+form" and summary.computed == len(collection)
    store = FeatureStore(config.store_path)
    assert resolve_key(store, backbone="mobilenet_v2", variant="finetuned-glaze+form") == summary.key
    meta = store.meta(summary.key)
    assert meta["weights_sha256"] == file_sha256(run_paths(config, result.run).trunk)
    assert meta["preprocess"]["crop_size"] == 64
    features = store.load(summary.key)
    assert features.X.shape == (len(collection), 1280) and np.isfinite(features.X).all()
    # the cached rows are the fine-tuned trunk's embeddings, not ImageNet's
    frozen = create_backbone("mobilenet_v2").eval()
    x = torch.randn(2, 3, 64, 64)
    tuned = load_backbone("mobilenet_v2", variant="finetuned-glaze+form", config=config)
    with torch.no_grad():
        assert not torch.allclose(frozen(x), tuned(x))
    with pytest.raises(FeatkitError, match="Variants there: finetuned-glaze\\+form"):
        load_backbone("mobilenet_v2", variant="finetuned-nothing", config=config)
    with pytest.raises(FeatkitError, match="is a fine-tuned mobilenet_v2, not resnet18"):
        load_backbone("resnet18", variant="finetuned-glaze+form", config=config)
    with pytest.raises(FeatkitError, match="belongs to a collection"):
        load_backbone("mobilenet_v2", variant="finetuned-glaze+form")


def test_interrupted_run_resumes_to_the_same_result(demo_config, tmp_path):
    config = _copy_config(demo_config, tmp_path)
    collection = load_manifest(config)
    settings = QUICK.replace(epochs=2, steps_per_epoch=2, train_blocks=2, unfreeze_every=1, dropout=0.3,
                             task_weighting="uncertainty", class_weights="effective",
                             augment=Augment.from_names(["hflip", "crop"]))
    whole = finetune(config, collection, settings=settings.replace(run="whole"))

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(config, collection, settings=settings.replace(run="cut"), callbacks=[stop_after_first])
    assert json.loads(run_paths(config, "cut").history.read_text())[-1]["epoch"] == 1
    with pytest.raises(FeatkitError, match="already exists \\(interrupted"):
        finetune(config, collection, settings=settings.replace(run="cut"))
    resumed = finetune(config, collection, settings=settings.replace(run="cut"), resume=True)
    a, b = (json.loads(run_paths(config, r).history.read_text()) for r in ("whole", "cut"))
    assert [h["trainable_blocks"] for h in b] == [2, 3]  # gradual unfreezing goes on after the resume
    assert resumed.report["uncertainty_weights"] == pytest.approx(whole.report["uncertainty_weights"])
    assert resumed.report["uncertainty_weights"]["glaze"] != 1.0  # learned, restored from the checkpoint
    for ra, rb in zip(a, b, strict=True):
        for task in settings.tasks:
            assert rb["train_loss"][task] == pytest.approx(ra["train_loss"][task], rel=1e-4)
    assert resumed.report["tasks"][0]["metrics"] == pytest.approx(whole.report["tasks"][0]["metrics"], abs=1e-6)
    sa, sb = (torch.load(run_paths(config, r).last, weights_only=True)["net"] for r in ("whole", "cut"))
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5) for k in sa)

    # a checkpoint of other tasks or another backbone is refused, naming both
    with pytest.raises(FeatkitError, match="trained with tasks glaze,form, not glaze"):
        finetune(config, collection, settings=settings.replace(run="cut", tasks=("glaze",)), resume=True)
    with pytest.raises(FeatkitError, match="trained with backbone mobilenet_v2, not resnet18"):
        finetune(config, collection, settings=settings.replace(run="cut", backbone="resnet18"), resume=True)
    with pytest.raises(FeatkitError, match="lr: 0.003 -> 0.1"):
        finetune(config, collection, settings=settings.replace(run="cut", lr=0.1), resume=True)
    with pytest.raises(FeatkitError, match="no fine-tuning run 'never'"):
        finetune(config, collection, settings=settings.replace(run="never"), resume=True)
    # the CLI's flags on --resume start from the run's own settings
    assert settings_from_flags(config, resume=True, run="cut", epochs=4) == settings.replace(run="cut", epochs=4)


# -- bad input -----------------------------------------------------------------------------
def test_bad_tasks_are_refused_before_training(demo_config, tmp_path):
    config = _copy_config(demo_config, tmp_path, museum="british")
    collection = load_manifest(config)
    with pytest.raises(FeatkitError, match="unknown task 'ware'; valid choices: form, glaze"):
        finetune(config, collection, settings=QUICK.replace(tasks=("glaze", "ware")))
    with pytest.raises(FeatkitError, match="task 'museum' has 1 class \\('british' on all 80"):
        finetune(config, collection, settings=QUICK.replace(tasks=("glaze", "museum")))
    with pytest.raises(FeatkitError, match="--train-blocks 40 is more than mobilenet_v2's 19 blocks"):
        finetune(config, collection, settings=QUICK.replace(train_blocks=40))
    assert not run_paths(config, "glaze+form").dir.exists()  # a run that never started leaves nothing


def test_gpu_out_of_memory_says_to_lower_the_batch_size(demo_config, tmp_path, monkeypatch):
    from featkit.finetune.train import Trainer

    def oom(self, progress=None):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_epoch", oom)
    config = _copy_config(demo_config, tmp_path)
    with pytest.raises(FeatkitError, match="out of GPU memory .* batch size 16; rerun with --batch-size 8"):
        finetune(config, load_manifest(config), settings=QUICK)


def test_cli_compare_single_and_multi_task_on_one_split(demo_config, tmp_path):
    from typer.testing import CliRunner

    from featkit_cli.main import app

    config = _copy_config(demo_config, tmp_path)
    config.write()
    base = ["finetune", "--config", str(tmp_path), "--image-size", "64", "--batch-size", "16", "--train-blocks", "1",
            "--precision", "fp32", "--workers", "0", "--epochs", "1", "--steps-per-epoch", "1"]
    out = CliRunner().invoke(app, [*base, "--tasks", "glaze,form", "--cascade", "glaze:form", "--augment", "none",
                                   "--compare", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["runs"] == {"multi": "glaze+form", "glaze": "glaze+form.single-glaze",
                              "form": "glaze+form.single-form"}
    multi = json.loads(run_paths(config, "glaze+form").report.read_text())
    assert FinetuneSettings.load(run_paths(config, "glaze+form").settings).cascade == (("glaze", "form"),)
    test_ids = {json.dumps(json.loads(run_paths(config, r).split.read_text())["test"]) for r in result["runs"].values()}
    assert len(test_ids) == 1  # one split for all three runs
    for row in result["tasks"]:
        single = json.loads(run_paths(config, result["runs"][row["task"]]).report.read_text())
        assert [t["task"] for t in single["tasks"]] == [row["task"]]
        assert row["single_balanced_accuracy"] == single["tasks"][0]["metrics"]["balanced_accuracy"]
        assert row["multi_balanced_accuracy"] == next(
            t["metrics"]["balanced_accuracy"] for t in multi["tasks"] if t["task"] == row["task"])
    assert FinetuneSettings.load(run_paths(config, "glaze+form.single-form").settings).augment.names == ()

    out = CliRunner().invoke(app, [*base, "--tasks", "glaze,decoration", "--cascade", "period:glaze"])
    assert out.exit_code == 2 and "'period', which is not among the tasks" in out.output
    assert "Traceback" not in out.output
    out = CliRunner().invoke(app, [*base, "--tasks", "glaze,form", "--resume", "--lr", "0.5"])
    assert out.exit_code == 2 and "lr: 0.001 -> 0.5" in out.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_finetune_on_gpu_with_mixed_precision(demo_config, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    config = _copy_config(demo_config, tmp_path)
    settings = QUICK.replace(device="cuda", precision=precision, train_blocks=None, epochs=2, workers=2)
    result = finetune(config, load_manifest(config), settings=settings)
    history = json.loads(run_paths(config, result.run).history.read_text())
    assert result.report["precision"] == precision and result.report["device"].startswith("cuda")
    assert all(np.isfinite(h["train_loss"][t]) for h in history for t in settings.tasks)
