"""Sign-in sessions in the server's database: they survive a restart (API tokens for a metrics scraper
need that). Which sessions may live, and for how long, is the web layer's policy (web.auth)."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from chaiderm.storage.database import Database, HasDatabase, as_database


class Account(Protocol):
    """Whom a session is opened for (web.auth.User)."""

    @property
    def name(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def credential(self) -> str: ...


def _digest(token: str) -> str:
    # only a hash is stored: a copy of the database does not sign anybody in
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    user: str
    kind: str
    csrf: str
    expires: float
    account: str | None = None  # None: opened before sessions were bound to accounts, no longer valid
    credential: str | None = None


class Sessions:
    """The sessions table of the database at ``db`` (a path, a Database, or a store whose database it
    shares). Valid sessions are cached briefly, so most requests cost no query."""

    CACHE_S = 5.0

    def __init__(self, db: Database | HasDatabase | str | Path):
        self.db = as_database(db)
        self._cache: dict[str, tuple[float, Session]] = {}
        self._lock = threading.Lock()

    def create(self, user: Account, kind: str, hours: float) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        s = Session(user.name, kind, secrets.token_urlsafe(24), now + hours * 3600, user.account, user.credential)
        with self.db.connect() as con:
            con.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            con.execute(
                "INSERT INTO sessions(token_hash, user, kind, csrf, created, expires, account, credential) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (_digest(token), s.user, kind, s.csrf, now, s.expires, s.account, s.credential),
            )
        return token, s

    def lookup(self, token: str) -> Session | None:
        if not token or len(token) > 200:
            return None
        key = _digest(token)
        now = time.time()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now and hit[1].expires > now:
            return hit[1]
        with self.db.connect() as con:
            row = con.execute(
                "SELECT user, kind, csrf, expires, account, credential FROM sessions WHERE token_hash = ?", (key,)
            ).fetchone()
        if row is None or row[3] <= now:
            return None
        s = Session(*row)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self.CACHE_S, s)
        return s

    def revoke(self, token: str) -> None:
        key = _digest(token)
        with self._lock:
            self._cache.pop(key, None)
        with self.db.connect() as con:
            con.execute("DELETE FROM sessions WHERE token_hash = ?", (key,))

    def retain(self, keys: set[tuple[str, str, str]]) -> int:
        """Delete every session whose (name, account, credential) is not in ``keys``: the sessions of
        removed accounts and of old passwords or roles are gone from the database, so that not even a
        users file restored from an old backup brings them back."""
        with self._lock:
            self._cache.clear()
        with self.db.connect() as con:
            rows = con.execute("SELECT token_hash, user, account, credential FROM sessions").fetchall()
            dead = [(r[0],) for r in rows if (r[1], r[2], r[3]) not in keys]
            con.executemany("DELETE FROM sessions WHERE token_hash = ?", dead)
        return len(dead)
