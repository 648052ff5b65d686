"""The server's audit log: who did what, when, from where, in the server's database. Append-only by
construction: triggers (storage.migrations) refuse every UPDATE and DELETE of a row. Queries are recorded
by their content hash, never by the image."""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from chaiderm.storage.database import Database, HasDatabase, as_database

COLUMNS = ("id", "at", "user", "role", "address", "action", "target", "status", "detail")

# what is recorded (the `action` column)
ACTIONS = (
    "sign_in",
    "sign_in_failed",
    "sign_in_throttled",
    "sign_out",
    "token",
    "query",  # an image queried (target: its content hash) or an archive case (detail)
    "view_query",  # a stored query's image or result seen again (target: its hash)
    "view_map",  # a QAM/RAM pair (target: query hash / archive image id)
    "view_image",  # an archive image (target: its id)
    "feedback",
    "archive_add",
    "archive_remove",
    "pacs_study",  # a PACS study opened in the viewer (target: its Study Instance UID)
    "pacs_store",  # a query's results stored into its PACS study (target: the source's SOP Instance UID)
    "audit_read",
    "forbidden",  # a signed-in user asked for more than their role allows
    "refused",  # a presented session (401: ended, unknown) or CSRF token (403) refused before any route
    "purge",
)


@dataclass(frozen=True)
class Entry:
    id: int
    at: float
    user: str | None
    role: str | None
    address: str | None
    action: str
    target: str | None
    status: int | None
    detail: str | None


class AuditLog:
    """The audit table of the database at ``db`` (a path, a Database, or a store whose database it shares)."""

    def __init__(self, db: Database | HasDatabase | str | Path):
        self.db = as_database(db)

    def record(
        self,
        action: str,
        *,
        user: str | None = None,
        role: str | None = None,
        address: str | None = None,
        target: str | None = None,
        status: int | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one entry (raises the database's DataError 'unavailable' when the database is locked:
        the caller refuses the action rather than do it unrecorded)."""
        with self.db.connect() as con:
            _insert(con, action, user=user, role=role, address=address, target=target, status=status, detail=detail)

    @contextlib.contextmanager
    def change(self) -> Iterator[Callable[..., None]]:
        """For a change that must not take effect unrecorded (an archive save): the database's write lock is
        taken before the body runs, so a database that cannot record refuses the change before it is made
        (the database's DataError 'unavailable'); the body makes the change, then appends its outcome rows with
        the function it is given (``record``'s arguments), committed as the block ends. A body that raises
        records nothing here: its caller records the refusal. Other writers of the database wait meanwhile
        (WAL: readers do not), so the body should hold only the save."""
        with self.db.connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield lambda action, **fields: _insert(con, action, **fields)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def entries(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        user: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        where, args = [], []
        for cond, value in (("at >= ?", since), ("at < ?", until), ("user = ?", user), ("action = ?", action)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self.db.connect() as con:
            return [Entry(*row) for row in con.execute(sql, args)]


def _insert(
    con: sqlite3.Connection,
    action: str,
    *,
    user: str | None = None,
    role: str | None = None,
    address: str | None = None,
    target: str | None = None,
    status: int | None = None,
    detail: str | None = None,
) -> None:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action '{action}'")
    con.execute(
        "INSERT INTO audit(at, user, role, address, action, target, status, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (time.time(), user, role, address, action, target, status, (detail or "")[:500] or None),
    )


def parse_time(value: str) -> float:
    """An ISO 8601 date or time (``2026-11-01``, ``2026-11-01T08:30``) as a Unix time; without a zone it
    is UTC. Raises ValueError with a message that shows the form expected."""
    try:
        t = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{value}': give a date or time as YYYY-MM-DD[THH:MM[:SS]] (UTC)") from None
    return (t if t.tzinfo else t.replace(tzinfo=datetime.UTC)).timestamp()


def to_csv(entries: list[Entry]) -> str:
    """Entries as CSV with ISO 8601 UTC times; a cell that a spreadsheet would run as a formula is quoted
    with a leading apostrophe (user names and targets come from outside)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "time_utc", "user", "role", "address", "action", "target", "status", "detail"])
    for e in entries:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.at)) + f".{int(e.at % 1 * 1000):03d}Z"
        cells = [e.id, when, e.user, e.role, e.address, e.action, e.target, e.status, e.detail]
        w.writerow(["'" + c if isinstance(c, str) and c.startswith(("=", "+", "-", "@")) else c for c in cells])
    return buf.getvalue()
