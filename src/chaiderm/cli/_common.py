"""What every command shares: the app, the console, one way to fail, progress bars."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from chaiderm.errors import ChaidermError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Evidence-based melanoma classification (CHAI).")
# no markup: paths and error texts printed here are data, and "[/x]" in one would raise mid-command
console = Console(stderr=True, markup=False)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


BAD_IMAGE = ("corrupt", "not_image", "empty", "too_large", "bad_shape")


@contextlib.contextmanager
def _errors(skip_bad_hint: bool = False):
    try:
        yield
    except ChaidermError as e:
        hint = ""
        if skip_bad_hint and getattr(e, "code", None) in BAD_IMAGE:
            hint = "\n  (remove or replace the file, or pass --skip-bad to skip unreadable images and count them)"
        typer.echo(f"error: {e}{hint}", err=True)  # plain and unwrapped: the message names the file
        raise typer.Exit(2) from None
    except OSError as e:
        # a folder that cannot be written (--out /proc/x), a full disk, a TLS file that is not what it
        # claims: the environment's fault, said in one line with the path, never a traceback
        where = e.filename if e.filename is not None else "error"
        typer.echo(f"error: {where}: {e.strerror or e}", err=True)
        raise typer.Exit(2) from None


def _warn(message: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", message))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _split_of(path: Path, split: str) -> str | None:
    return split if (path / split).is_dir() else None
