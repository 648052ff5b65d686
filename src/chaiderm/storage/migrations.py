"""The schema of the server's database, as numbered migrations. The file's ``PRAGMA user_version`` is the
number of the last one applied; opening a database applies the missing ones in order, each in its own
transaction with the version it reaches, so a crash leaves the file at one version or the next, never
between. A file from a newer chaiderm is refused rather than written by code that does not know its
schema.

To change the schema, append a migration; never edit one that has shipped (databases out there were
built by it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaiderm.errors import DataError

SCHEMA_V1 = (
    """CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    image BLOB NOT NULL,
    created REAL NOT NULL,
    archive_id TEXT,
    purged REAL
)""",
    """CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL REFERENCES queries(query_id),
    image_id TEXT NOT NULL,
    relevant INTEGER NOT NULL CHECK (relevant IN (0, 1)),
    created REAL NOT NULL,
    user TEXT,
    role TEXT
)""",
    "CREATE INDEX IF NOT EXISTS feedback_query ON feedback(query_id)",
    # who posted a query (by account id; the name only to read it by): a signed-in viewer or expert sees
    # only the queries they posted; the same image posted by two users is one query owned by both
    """CREATE TABLE IF NOT EXISTS query_owners (
    query_id TEXT NOT NULL REFERENCES queries(query_id),
    owner TEXT NOT NULL,
    user TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (query_id, owner)
)""",
    """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    user TEXT,
    role TEXT,
    address TEXT,
    action TEXT NOT NULL,
    target TEXT,
    status INTEGER,
    detail TEXT
)""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit(at)",
    # append-only by construction: no row of the audit log is ever changed or removed
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    # only a hash of each token is stored: a copy of the database does not sign anybody in
    """CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('cookie', 'token')),
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    account TEXT,
    credential TEXT
)""",
)
# Databases from before schema versions (user_version 0) hold any subset of these tables, created by the
# release that first wrote them and widened since by the columns below, added on every open. A session
# without an account is no longer valid; a feedback row without a role predates roles.
FIRST_COLUMNS = {
    "queries": ("query_id", "image", "created"),
    "feedback": ("id", "query_id", "image_id", "relevant", "created"),
    "query_owners": ("query_id", "owner", "user", "created"),
    "audit": ("id", "at", "user", "role", "address", "action", "target", "status", "detail"),
    "sessions": ("token_hash", "user", "kind", "csrf", "created", "expires"),
}
ADDED_COLUMNS = {
    "queries": {"archive_id": "TEXT", "purged": "REAL"},
    "feedback": {"user": "TEXT", "role": "TEXT"},
    "sessions": {"account": "TEXT", "credential": "TEXT"},
}


@dataclass(frozen=True)
class Migration:
    version: int
    does: str
    apply: Callable[[sqlite3.Connection, Path], None]


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def _v1(con: sqlite3.Connection, path: Path) -> None:
    """The whole schema in a new file; in one written before versions, the tables and columns it lacks."""
    for table, first in FIRST_COLUMNS.items():
        have = _columns(con, table)
        missing = [c for c in first if c not in have]
        if have and missing:
            raise DataError(path, f"not a chaiderm server database (its table '{table}' has no '{missing[0]}')")
    for statement in SCHEMA_V1:
        con.execute(statement)
    for table, added in ADDED_COLUMNS.items():
        have = _columns(con, table)
        for col, kind in added.items():
            if col not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "queries, feedback, query owners, audit log, sessions", _v1),)
SCHEMA_VERSION = len(MIGRATIONS)
assert all(m.version == i for i, m in enumerate(MIGRATIONS, 1)), "migrations are numbered 1, 2, ... in order"


def version_of(con: sqlite3.Connection) -> int:
    return int(con.execute("PRAGMA user_version").fetchone()[0])


def _check(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise DataError(
            path,
            f"a database of a newer chaiderm (schema version {version}; this one reads up to {SCHEMA_VERSION}): "
            "upgrade chaiderm to open it",
        )


def migrate(con: sqlite3.Connection, path: Path) -> int:
    """Bring the database to SCHEMA_VERSION; returns it. A no-op (no write) on a current database.
    ``con`` is in autocommit mode; each step takes the write lock first, so two processes opening the same
    old file apply each migration once."""
    version = version_of(con)
    _check(version, path)
    while version < SCHEMA_VERSION:
        con.execute("BEGIN IMMEDIATE")
        try:
            version = version_of(con)  # another process may have migrated it while this one waited
            _check(version, path)
            if version < SCHEMA_VERSION:
                step = MIGRATIONS[version]
                step.apply(con, path)
                con.execute(f"PRAGMA user_version = {step.version}")
                version = step.version
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    return version
