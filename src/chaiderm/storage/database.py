"""The server's SQLite database file: one connection per thread, write-ahead logging, a busy timeout, and
the schema brought to the current version (storage.migrations) when it is opened."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from chaiderm.errors import DataError
from chaiderm.storage.migrations import migrate

# a locked or failing database must answer within a second (the page says so and the click can be
# retried) instead of holding a request for half a minute and then losing it
BUSY_TIMEOUT_S = 0.8


class Database:
    """The file at ``path``, created if missing and migrated on open. Every store of this package
    (FeedbackStore, AuditLog, Sessions) works through ``connect()``; stores given the same Database share
    its connections."""

    def __init__(self, path: str | Path, *, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(self.path, f"cannot create the database's folder ({e.strerror})") from None
        try:
            with self.connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                self.version = migrate(con, self.path)
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (opened once: opening one per operation cost ~0.8 ms of every write,
        measured). Autocommit, a busy timeout that queues writers, synchronous commits."""
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
                con.execute("PRAGMA synchronous=FULL")
                con.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as e:
                raise DataError(self.path, f"cannot open the feedback database ({e})", code="unavailable") from None
            self._local.con = con
        try:
            yield con
        except sqlite3.Error as e:
            # locked, busy, read-only, disk full: nothing was written; the caller reports it. The connection
            # is dropped, so that the next operation starts clean whatever state this one left.
            self._local.con = None
            with contextlib.suppress(sqlite3.Error):
                con.close()
            what = "unavailable" if isinstance(e, sqlite3.OperationalError) else "error"
            raise DataError(self.path, f"feedback database {what} ({e})", code="unavailable") from None

    def close(self) -> None:
        """Close this thread's connection (the last one to close folds the write-ahead log into the file)."""
        con, self._local.con = getattr(self._local, "con", None), None
        if con is not None:
            con.close()


class HasDatabase(Protocol):
    """A store of this package: its database is shared with another store built from it."""

    db: Database


def as_database(where: Database | HasDatabase | str | Path) -> Database:
    """A Database for a path, or the one a store of this package already uses (sharing its connections)."""
    if isinstance(where, Database):
        return where
    if isinstance(where, str | Path):
        return Database(where)
    return where.db
