"""featkit extract: cache embeddings of every image in the store (resumable)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import ConfigOpt, JsonOpt, choice, console, friendly, open_collection, print_json
from featkit.backbones import check_backbone_name, list_backbones
from featkit.extract.engines import list_engines
from featkit.extract.settings import DEVICES, PRECISIONS
from featkit.extract.tta import list_tta


def _device(value: str) -> str:
    if value.split(":")[0] not in DEVICES:
        raise typer.BadParameter(f"unknown device {value!r}; valid choices: auto, cpu, cuda or cuda:N")
    return value


@friendly
def extract(
    backbone: str = typer.Option("mobilenet_v2", "--backbone", "-b", help=f"One of: {', '.join(list_backbones())}.",
                                 callback=choice("backbone", (), check=check_backbone_name)),
    weights: str = typer.Option(None, help="Weights tag (e.g. imagenet1k_v2) or 'random' (default: the backbone's)."),
    variant: str = typer.Option(None, help="Store group below the backbone (default: the weights tag; "
                                           "finetuned-<run> for a fine-tuned trunk)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    workers: int = typer.Option(None, "--workers", min=0, help="DataLoader workers (default: auto)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N].", callback=_device),
    precision: str = typer.Option("auto", help=f"{', '.join(PRECISIONS)} (auto: bf16/fp16 where fast).",
                                  callback=choice("precision", PRECISIONS)),
    fp32: bool = typer.Option(False, "--fp32", help="Force full precision (same as --precision fp32)."),
    limit: int = typer.Option(None, "--limit", min=0, help="Embed at most this many pending images."),
    retry_failed: bool = typer.Option(False, help="Try again images that failed before."),
    float16: bool = typer.Option(False, "--float16", help="Store features as float16 (half the disk)."),
    store: Path = typer.Option(None, help="Override the store path from featkit.toml."),
    manifest: Path = typer.Option(None, help="Override the manifest from featkit.toml."),
    engine: str = typer.Option("local", help=f"One of: {', '.join(list_engines())} (ray: pip install "
                                             "'featkit\\[ray]').", callback=choice("engine", list_engines)),
    address: str = typer.Option(None, help="Ray cluster address for --engine ray (default: start a local Ray)."),
    tta: str = typer.Option("none", help=f"Test-time augmentation: {', '.join(list_tta())}; the averaged rows "
                                         "are stored as variant <weights>+tta-<mode>.",
                            callback=choice("TTA mode", list_tta)),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the backbone (pays off on long runs)."),
    gpu_decode: bool = typer.Option(None, "--gpu-decode/--no-gpu-decode",
                                    help="Decode JPEGs on the GPU with nvjpeg (default: on when extracting on CUDA)."),
    config_dir: Path = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Embed images with BACKBONE and cache them in the HDF5 store; rerun to resume."""
    col = open_collection(config_dir, store=store, manifest=manifest)
    summary = col.extract_summary(
        backbone, weights=weights, variant=variant, batch_size=batch_size, workers=workers, device=device,
        precision="fp32" if fp32 else precision, limit=limit, retry_failed=retry_failed,
        storage_dtype="float16" if float16 else "float32", progress=not json_out, engine=engine, address=address,
        tta=tta, compile=compile_model, gpu_decode=gpu_decode)
    if json_out:
        print_json(summary.to_dict())
        return
    console.print(
        f"[bold]{summary.key}[/] in {summary.store}: {summary.computed} embedded, {summary.already_done} already done, "
        f"{summary.failed} failed, {summary.remaining} remaining — {summary.images_per_s:.1f} img/s on "
        f"{summary.device} ({summary.precision})"
    )
    if summary.skipped_failed:
        console.print(f"  {summary.skipped_failed} images failed in an earlier run (use --retry-failed)")
    for image_id, error in summary.failures[:20]:
        console.print(f"  [yellow]failed[/] {image_id}: {error}", highlight=False, markup=False)
    if len(summary.failures) > 20:
        console.print(f"  … and {len(summary.failures) - 20} more (see `featkit info --failures`)")
