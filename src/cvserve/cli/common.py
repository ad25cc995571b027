"""What every command shares: the console, Settings from env + flags, flags for settings."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from cvserve.errors import CVServeError
from cvserve.params import PARAM
from cvserve.settings import Settings

console = Console(stderr=True)


def setting_option(name: str, *flags: str, help: str, shown: str | None = None) -> Any:
    """A flag for Settings field `name`: its env var and shown default come from the field.

    Left out, it is None, so the value from the environment or the field's default stands.
    """
    field = Settings.model_fields[name]
    default = field.default if field.default_factory is None else None  # no env read at import
    show: bool | str = shown or (str(default) if default not in (None, (), "") else False)
    return typer.Option(None, *flags, envvar=Settings.env_name(name), show_default=show, help=help)


def param_option(name: str) -> Any:
    """A flag for inference parameter `name`: its names and help come from the parameter spec.

    It is read as text and parsed by the spec, so a malformed value gets the server's message.
    """
    param = PARAM[name]
    assert param.flags, f"parameter {name} has no command-line flag"
    return typer.Option(None, *param.flags, help=param.description)


MODELS_DIR_OPT: Any = setting_option(
    "models_dir", "--models-dir", help="Model store folder.", shown="<data dir>/models"
)


def settings_with(**overrides: object) -> Settings:
    """Settings from the environment, then the flags given (None: not given)."""
    try:
        return Settings.from_env().with_overrides(**overrides)
    except ValidationError as e:  # a bad CVSERVE_* value or flag: say which, no traceback
        for err in e.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            env = Settings.env_name(name) if name in Settings.model_fields else name
            message = f"{name} ({env}): {err['msg']}, got {err.get('input')!r}"
            console.print(f"[red]invalid setting[/red] {escape(message)}", soft_wrap=True)
        raise typer.Exit(2) from None


def fail(e: CVServeError) -> NoReturn:
    console.print(f"[red]error:[/red] {e.message}")
    raise typer.Exit(2)


def split_list(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeated and comma-separated flag values as one tuple; None when none were given."""
    out: list[str] = []
    for v in values or []:
        out.extend(s.strip() for s in v.split(",") if s.strip())
    return tuple(out) or None
