"""The `l2mu-agent` typer app and what every command group shares: the one-line error rule, subject lists."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import typer

from l2mu.agent.errors import KNOWN_ERRORS, UsageError

app = typer.Typer(
    help="Smartwatch hand-activity recognition with a spiking L2MU network, published over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures (l2mu.agent.errors) end the command with one line on stderr and exit status 2; any other
    exception is a bug and keeps its traceback (exit status 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KNOWN_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_subjects(values: list[str] | None) -> list[int] | None:
    """--subjects 1600,1601 or --subjects 1600 --subjects 1601."""
    if not values:
        return None
    out = []
    for v in values:
        for part in v.replace(" ", ",").split(","):
            if part:
                try:
                    out.append(int(part))
                except ValueError:
                    raise UsageError(f"--subjects: {part!r} is not a subject number") from None
    return out


def parse_names(values: list[str] | None) -> list[str] | None:
    """--val-wearers anna,ben or --val-wearers anna --val-wearers ben."""
    if not values:
        return None
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


SubjectsOpt = Annotated[
    list[str] | None, typer.Option("--subjects", help="Subject ids, comma-separated or repeated.")
]
