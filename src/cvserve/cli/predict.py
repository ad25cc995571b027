"""`cvserve predict`: a batch of images through a model, in-process or against a server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cvserve.cli.common import MODELS_DIR_OPT, console, param_option, settings_with

if TYPE_CHECKING:
    from cvserve.predict import PredictOptions
    from cvserve.settings import Settings


def predict(
    source: str = typer.Argument(..., help="An image, a folder (recursive), a glob, or a video file."),
    model: str = typer.Option(..., "--model", "-m", help="DATASET/VERSION to run."),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output folder."),
    fmt: str = typer.Option("json", "--format", "-f", help="json (one file per image), jsonl, coco."),
    save_images: bool = typer.Option(False, "--save-images", help="Also write annotated images."),
    url: str | None = typer.Option(None, "--url", envvar="CVSERVE_URL", help="Use this server instead of running in-process."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CVSERVE_API_KEY", help="Key for --url."),
    confidence: str | None = param_option("confidence"),
    overlap: str | None = param_option("overlap"),
    classes: str | None = param_option("classes"),
    max_detections: str | None = param_option("max_detections"),
    keypoint_confidence: str | None = param_option("keypoint_confidence"),
    mask_format: str | None = param_option("response_mask_format"),
    concurrency: int | None = typer.Option(None, "--concurrency", "-j", help="Images in flight."),
    models_dir: Path | None = MODELS_DIR_OPT,
    track: bool = typer.Option(False, "--track", help="Video: track objects (tracker_id, mot.txt)."),
    tracker: str = typer.Option("bytetrack", "--tracker", help="Video: bytetrack, sort or ocsort."),
) -> None:  # fmt: skip
    """Predict a batch of images (resumable, with a summary at the end) or a video file
    (annotated.mp4, predictions.jsonl per frame, mot.txt with --track)."""
    from rich.markup import escape as rich_escape

    from cvserve.cli.display import print_summary, run_with_progress
    from cvserve.predict import PredictError, PredictOptions, parameters_from_flags

    try:
        opts = PredictOptions(
            source=source, model_id=model, out=out, format=fmt.lower(), save_images=save_images,
            url=url, api_key=api_key, concurrency=concurrency, models_dir=models_dir,
            **parameters_from_flags({
                "confidence": confidence, "overlap": overlap, "classes": classes,
                "max_detections": max_detections, "keypoint_confidence": keypoint_confidence,
                "response_mask_format": mask_format,
            }),
        )  # fmt: skip
        # In-process runs take the store, limits and cores from Settings; --url needs none.
        settings = None if url else settings_with(models_dir=models_dir)
        from cvserve.predict.video import is_video

        if is_video(source):
            _predict_video(opts, tracker.lower() if track else None, settings)
            return
        summary = run_with_progress(opts, console, settings)
    except PredictError as e:
        console.print(f"[red]error:[/red] {rich_escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    print_summary(summary, console)
    if summary.failures:
        raise typer.Exit(1)


def _predict_video(opts: PredictOptions, tracker: str | None, settings: Settings | None) -> None:
    from rich.markup import escape as rich_escape

    from cvserve.predict import PredictError
    from cvserve.predict.video import predict_video

    if tracker not in (None, "bytetrack", "sort", "ocsort"):
        console.print(f"[red]error:[/red] unknown tracker {tracker!r} (bytetrack, sort, ocsort)")
        raise typer.Exit(2)
    try:
        summary = predict_video(opts, tracker, settings)
    except PredictError as e:
        console.print(f"[red]error:[/red] {rich_escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2) from None
    written = ", ".join(summary.files)
    console.print(f"{summary.frames} frames -> {rich_escape(str(summary.out))} ({written})")
