"""The terminal side of `cvserve predict`: a rich progress bar, then a summary."""

from __future__ import annotations

from typing import Any

from cvserve.predict import FAILURES_NAME, PredictOptions, Summary, run_predict
from cvserve.settings import Settings


def run_with_progress(
    opts: PredictOptions, console: Any, settings: Settings | None = None
) -> Summary:
    """run_predict with a rich progress bar (rate and ETA) on `console`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} img/s" if speed else "-- img/s", style="progress.data.speed")

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    state: dict[str, Any] = {}

    def on_start(total: int, skipped: int) -> None:
        if skipped:
            console.print(f"resuming: {skipped} of {total} images already done")
        state["task"] = progress.add_task(opts.model_id, total=total - skipped, failed="")

    def on_progress(failed: int) -> None:
        progress.update(
            state["task"], advance=1, failed=f"[red]{failed} failed[/red]" if failed else ""
        )

    with progress:
        return run_predict(opts, settings, on_start=on_start, on_progress=on_progress)


def print_summary(summary: Summary, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]{escape(summary.model_id)}[/bold] ({summary.task})")
    table = Table(show_header=True)
    table.add_column("class")
    table.add_column("count" if summary.detections else "images", justify="right")
    for name, n in summary.per_class.most_common():
        table.add_row(escape(name), str(n))
    if summary.per_class:
        console.print(table)
    lines = [
        f"images: {summary.found} found, {summary.done} predicted, {summary.skipped} already "
        f"done, {len(summary.failures)} failed",
    ]
    if summary.detections:
        lines.append(f"detections: {summary.detections}")
    lines.append(f"time: {summary.elapsed_s:.1f} s ({summary.rate:.1f} images/s)")
    for line in lines:
        console.print(line)
    for name, error in summary.failures[:10]:
        console.print(f"  [red]failed[/red] {escape(name)}: {escape(error)}", soft_wrap=True)
    if len(summary.failures) > 10:
        console.print(f"  ... and {len(summary.failures) - 10} more (see {FAILURES_NAME})")
    for path in summary.outputs:
        console.print(f"output: {escape(str(path))}", soft_wrap=True)
