"""A rich progress display for pulls: one row per model, one tick per step."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from cvserve.zoo.base import STEPS


class RichProgress:
    """A ProgressCallback drawing on the terminal; starts on the first report, stops when
    every model it has seen is done or failed."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[model]:<14}"),
            BarColumn(bar_width=20),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._open: set[str] = set()
        self._started = False

    def __call__(self, name: str, step: str, detail: str = "") -> None:
        if not self._started:
            self._progress.start()
            self._started = True
        task = self._tasks.get(name)
        if task is None:
            task = self._progress.add_task("", total=len(STEPS), model=name)
            self._tasks[name] = task
            self._open.add(name)
        detail = detail.strip().splitlines()[0][:100] if detail.strip() else ""
        text = f"{step}: {detail}" if detail else step
        if step == "done":
            self._progress.update(task, completed=len(STEPS), description="[green]done")
        elif step == "failed":
            self._progress.update(task, description=f"[red]failed[/red] {detail}")
        else:
            done = STEPS.index(step) if step in STEPS else None
            self._progress.update(task, completed=done, description=text)
        if step in ("done", "failed"):
            self._open.discard(name)
            if not self._open:
                self._progress.stop()
                self._started = False


def rich_progress(console: Console | None = None) -> RichProgress:
    """A progress callback for `cvserve.zoo.pull`."""
    return RichProgress(console)
