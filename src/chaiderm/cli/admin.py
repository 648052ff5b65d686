"""Running a clinic's server: `chaiderm users`, `chaiderm audit`, `chaiderm purge`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from chaiderm.cli._common import _errors, _fail, console

users_app = typer.Typer(no_args_is_help=True, help="Who may sign in to `chaiderm serve`, and with which role.")
USERS_FILE = Path("chaiderm-users.json")


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        import sys

        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="user name (letters, digits, . _ @ -)")],
    role: Annotated[str, typer.Option(help="viewer, expert or admin")],
    users: Annotated[Path, typer.Option(help="users file (created if missing)")] = USERS_FILE,
    password_stdin: Annotated[bool, typer.Option(help="read the password from the first line of stdin")] = False,
    replace: Annotated[bool, typer.Option(help="change an existing user's role and password")] = False,
) -> None:
    """Add a user (asks for the password; it is stored only as an argon2id hash)."""
    from chaiderm.web.auth import Users, check_name, check_password, check_role

    with _errors():
        check_name(name)
        check_role(role)
        uf = Users(users, create=True)
        existed = name in uf.users
        if existed and not replace:
            raise _fail(f"{users}: user '{name}' exists; add --replace to change the role or password")
        password = _new_password(password_stdin)
        check_password(password)
        uf.add(name, role, password, replace=replace)
    ended = "; their sessions on a running server end at their next request" if existed else ""
    console.print(f"{name} ({role}) saved in {users}{ended}")


@users_app.command("remove")
def users_remove(name: str, users: Annotated[Path, typer.Option(help="users file")] = USERS_FILE) -> None:
    """Remove a user; a running server signs them out at their next request."""
    from chaiderm.web.auth import Users

    with _errors():
        Users(users).remove(name)
    console.print(f"{name} removed from {users}")


@users_app.command("list")
def users_list(users: Annotated[Path, typer.Option(help="users file")] = USERS_FILE) -> None:
    """List the users and their roles (never their password hashes)."""
    from chaiderm.web.auth import Users

    with _errors():
        uf = Users(users)
    for name, u in sorted(uf.users.items()):
        typer.echo(f"{name}\t{u['role']}")


def _when(option: str, value: str | None) -> float | None:
    from chaiderm.data.audit import parse_time

    try:
        return None if value is None else parse_time(value)
    except ValueError as e:
        raise _fail(f"{option} {e}") from None


def audit(
    db: Annotated[Path, typer.Option(help="the server's database (`serve --db`)")],
    since: Annotated[str | None, typer.Option(help="from this date/time, UTC (YYYY-MM-DD[THH:MM])")] = None,
    until: Annotated[str | None, typer.Option(help="before this date/time, UTC")] = None,
    user: Annotated[str | None, typer.Option(help="only this user's entries")] = None,
    action: Annotated[str | None, typer.Option(help="only this action (e.g. sign_in_failed, view_image)")] = None,
    csv: Annotated[Path | None, typer.Option(help="write CSV here ('-': standard output)")] = None,
) -> None:
    """Export the audit log: who signed in, queried, saw which images, clicked, changed the archive."""
    from chaiderm.errors import DataError
    from chaiderm.storage import ACTIONS, AuditLog, to_csv

    if action is not None and action not in ACTIONS:
        raise _fail(f"--action must be one of {', '.join(ACTIONS)}")
    t0, t1 = _when("--since", since), _when("--until", until)
    with _errors():
        if not db.is_file():
            raise DataError(db, "database not found")
        entries = AuditLog(db).entries(since=t0, until=t1, user=user, action=action)
        text = to_csv(entries)
        if csv is None or str(csv) == "-":
            typer.echo(text, nl=False)
        else:
            from chaiderm._io import write_text

            write_text(csv, text)
            console.print(f"{len(entries)} entries written to {csv}")


def purge(
    db: Annotated[Path, typer.Option(help="the server's database (`serve --db`)")],
    older_than: Annotated[float, typer.Option(help="erase query images recorded more than this many days ago")],
) -> None:
    """Erase stored query images by age (feedback rows stay; the images are overwritten, not just unlinked)."""
    from chaiderm.errors import DataError
    from chaiderm.storage import AuditLog, FeedbackStore

    if not math.isfinite(older_than) or older_than < 0:
        raise _fail(f"--older-than must be 0 or more days, not {older_than:g}")
    with _errors():
        if not db.is_file():
            raise DataError(db, "database not found")
        store = FeedbackStore(db)
        n = store.purge(older_than)
        AuditLog(store).record("purge", user="chaiderm purge", detail=f"{n} query image(s) over {older_than:g} days")
    console.print(f"erased {n} query image(s) older than {older_than:g} days from {db}")
