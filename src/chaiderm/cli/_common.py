"""What every command shares: the app, the console, one way to fail, progress bars."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from chaiderm.errors import ChaidermError

C = TypeVar("C")
T = TypeVar("T")

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


SERVER_DB = Path("chaiderm-feedback.db")  # `serve --db`'s default, where `archive` looks for it
TRAIN, VAL, TEST = "train", "val", "test"  # the splits commands read where none is named


def default_split(path: Path, split: str | None, role: str = TRAIN) -> str | None:
    """The split of ``path`` a command reads: ``split`` where given; else ``role`` where the data has one
    (an ISIC 2017 folder, or a generic folder with a ``role`` sub-folder); else None, the whole folder."""
    from chaiderm.data.records import is_isic2017

    if split:
        return split
    return role if is_isic2017(path) or (path / role).is_dir() else None


def flag_of(setting: str) -> str:
    """The option that sets a setting: ``--image-size`` for ``image_size``."""
    return "--" + setting.replace("_", "-")


def config_from_options(kind: type[C], options: Mapping[str, object]) -> C:
    """A ``ModelConfig`` or ``TrainConfig`` from a command's options: the one place the CLI maps flags to
    settings. An option named after a field sets it (``flag_of``); one left out (None) keeps the field's
    default; paths are stored as text. The config checks its values (``chaiderm.config.RULES``); a bad one
    is reported under its flag. A new setting is a field and an option of its name, nothing else."""
    names = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    values = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if k in names and v is not None}
    with _as_flag():
        return kind(**values)


def checked_option(setting: str, value: T) -> T:
    """An option that sets a setting outside a config (``query --vote``), checked by the config's rule."""
    from chaiderm.config import check_setting

    if value is None:
        return value
    with _as_flag():
        return check_setting(setting, value)


@contextlib.contextmanager
def _as_flag():
    from chaiderm.config import SettingError

    try:
        yield
    except SettingError as e:
        raise _fail(f"{flag_of(e.setting)}: {e.detail}") from None


def show_removed_settings_in_one_line() -> None:
    """An old config.json's removed setting (``config.RemovedSettingWarning``) as one ``warning:`` line,
    once however often the file is read."""
    from chaiderm.config import RemovedSettingWarning

    shown, said = warnings.showwarning, set()
    warnings.simplefilter("always", RemovedSettingWarning)  # deduplicated here, by text

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, RemovedSettingWarning):
            if str(message) not in said:
                said.add(str(message))
                typer.echo(f"warning: {message}", err=True)  # unwrapped: one line
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
