"""The `cvserve` command: serve, models (import | list | remove | pull | quantize), predict."""

from __future__ import annotations

import typer

from cvserve.cli import models, predict, serve

app = typer.Typer(
    help="cvserve: a self-hosted computer-vision inference server.", no_args_is_help=True
)
models_app = typer.Typer(help="Manage the local model store.", no_args_is_help=True)

app.command()(serve.serve)
app.add_typer(models_app, name="models")
models_app.command("import")(models.models_import)
models_app.command("list")(models.models_list)
models_app.command("remove")(models.models_remove)
models_app.command("pull")(models.models_pull)
models_app.command("quantize")(models.models_quantize)
app.command()(predict.predict)

__all__ = ["app", "models_app"]
