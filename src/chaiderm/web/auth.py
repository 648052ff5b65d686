"""Who may use a chaiderm server: users and roles in a file the admin manages (`chaiderm users`),
passwords as argon2id hashes, sessions (browser cookie or API bearer token) in the server's database,
and a brake on repeated failed sign-ins from one address.

Roles nest: a **viewer** queries and sees evidence, an **expert** also records similarity feedback (the
only clicks `train --feedback` learns from), an **admin** also changes the archive and reads the audit log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chaiderm._io import write_text
from chaiderm.data.feedback import FeedbackStore
from chaiderm.errors import DataError

ROLES = ("viewer", "expert", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
MIN_PASSWORD = 10
MAX_PASSWORD = 1024  # argon2 hashes anything, but a megabyte "password" is a cheap way to burn CPU
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SESSION_HOURS = 12.0
MAX_TOKEN_HOURS = 24.0 * 90
COOKIE = "chaiderm_session"
_HASHER = PasswordHasher()  # argon2id with the library's current recommended cost
# verified against when the name is unknown, so that a wrong name takes as long as a wrong password
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]


# the one person of a server without sign-in (loopback only): may do everything, as before sign-in existed
LOCAL = User("local", "admin")
LOCAL_ROLE = "local"  # how that person's feedback is labelled in the database


def check_role(role: str) -> str:
    if role not in RANK:
        raise DataError(None, f"role must be one of {', '.join(ROLES)}, not '{role}'")
    return role


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise DataError(
            None, f"user name '{name}' must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise DataError(None, f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise DataError(None, f"a password has at most {MAX_PASSWORD} characters")
    return password


class Users:
    """The users file: ``{"users": {name: {"role", "hash", "created"}}}``, written atomically and
    readable by its owner only. The server re-reads it when it changes, so an admin's `chaiderm users`
    command takes effect (a removed user is signed out) without a restart."""

    def __init__(self, path: str | Path, *, create: bool = False):
        self.path = Path(path)
        self.lock = threading.Lock()
        self._stamp: int | None = None
        self.users: dict[str, dict] = {}
        if not self.path.exists():
            if not create:
                raise DataError(
                    self.path, "users file not found; create it with `chaiderm users add NAME --role admin`"
                )
            return
        self._read()

    def _read(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            users = raw["users"]
            if not isinstance(users, dict):
                raise TypeError("'users' is not an object")
            for name, u in users.items():
                check_name(name)
                check_role(u["role"])
                if not str(u["hash"]).startswith("$argon2"):
                    raise ValueError(f"user '{name}' has no argon2 hash")
        except (OSError, ValueError, KeyError, TypeError, DataError) as e:
            raise DataError(self.path, f"unreadable users file ({e})") from None
        self.users = users
        self._stamp = self.path.stat().st_mtime_ns

    def refresh(self) -> None:
        """Re-read the file if it changed since it was read (a bad edit keeps the last good list)."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            return
        if stamp != self._stamp:
            with self.lock:
                try:
                    self._read()
                except DataError:
                    self._stamp = stamp

    def save(self) -> None:
        write_text(self.path, json.dumps({"users": self.users}, indent=2, sort_keys=True) + "\n")
        os.chmod(self.path, 0o600)
        self._stamp = self.path.stat().st_mtime_ns

    def add(self, name: str, role: str, password: str, *, replace: bool = False) -> None:
        check_name(name)
        check_role(role)
        check_password(password)
        if name in self.users and not replace:
            raise DataError(self.path, f"user '{name}' exists; add --replace to change the role or password")
        self.users[name] = {"role": role, "hash": _HASHER.hash(password), "created": time.time()}
        self.save()

    def remove(self, name: str) -> None:
        if name not in self.users:
            raise DataError(self.path, f"no user '{name}'")
        del self.users[name]
        self.save()

    def get(self, name: str) -> User | None:
        u = self.users.get(name)
        return None if u is None else User(name, u["role"])

    def verify(self, name: str, password: str) -> User | None:
        """The user, if the password is theirs; None otherwise (in about the same time either way)."""
        u = self.users.get(name)
        if len(password) > MAX_PASSWORD:
            return None
        try:
            _HASHER.verify(u["hash"] if u else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, u["role"]) if u else None


SESSIONS = """
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('cookie', 'token')),
    csrf TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
"""


def _digest(token: str) -> str:
    # only a hash is stored: a copy of the database does not sign anybody in
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    user: str
    kind: str
    csrf: str
    expires: float


class Sessions:
    """Sign-in sessions in the server's SQLite database (they survive a restart; API tokens for a
    metrics scraper need that). Valid ones are cached briefly, so most requests cost no query."""

    CACHE_S = 5.0

    def __init__(self, store: FeedbackStore):
        self.store = store
        with store.connect() as con:
            con.executescript(SESSIONS)
        self._cache: dict[str, tuple[float, Session]] = {}
        self._lock = threading.Lock()

    def create(self, user: str, kind: str, hours: float = SESSION_HOURS) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        now = time.time()
        s = Session(user, kind, secrets.token_urlsafe(24), now + hours * 3600)
        with self.store.connect() as con:
            con.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            con.execute(
                "INSERT INTO sessions(token_hash, user, kind, csrf, created, expires) VALUES (?, ?, ?, ?, ?, ?)",
                (_digest(token), user, kind, s.csrf, now, s.expires),
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
        with self.store.connect() as con:
            row = con.execute("SELECT user, kind, csrf, expires FROM sessions WHERE token_hash = ?", (key,)).fetchone()
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
        with self.store.connect() as con:
            con.execute("DELETE FROM sessions WHERE token_hash = ?", (key,))


class SignInThrottle:
    """Failed sign-ins per client address: the first ``free`` within ``window_s`` cost nothing more; after
    them each attempt must wait twice as long as the last (2 s, 4 s, ... up to ``cap_s``), answered 429."""

    def __init__(self, free: int = 5, window_s: float = 900.0, cap_s: float = 300.0):
        self.free, self.window_s, self.cap_s = free, window_s, cap_s
        self.failures: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds this address must still wait before its next attempt (0: go ahead)."""
        now = time.time() if now is None else now
        with self.lock:
            seen = self.failures.get(address)
            if not seen:
                return 0.0
            while seen and seen[0] < now - self.window_s:
                seen.popleft()
            over = len(seen) - self.free + 1
            if over <= 0:
                return 0.0
            return max(0.0, seen[-1] + min(self.cap_s, 2.0**over) - now)

    def failed(self, address: str, now: float | None = None) -> None:
        with self.lock:
            if len(self.failures) > 100_000:
                self.failures.clear()
            self.failures.setdefault(address, deque(maxlen=64)).append(time.time() if now is None else now)

    def succeeded(self, address: str) -> None:
        with self.lock:
            self.failures.pop(address, None)
