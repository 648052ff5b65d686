"""Who may use a chaiderm server: users and roles in a file the admin manages (`chaiderm users`),
passwords as argon2id hashes, sessions (browser cookie or API bearer token) in the server's database,
and a brake on repeated failed sign-ins from one address or for one account name.

A session is bound to the account it was opened for, not to its name: every user record carries a random
account id that is never reused, and a session stores that id with a digest of the account's password
hash and role. A password change, a role change or a removal therefore ends every session of the account at
once, and a new user given a removed user's name never inherits the old sessions.

Roles nest: a **viewer** queries and sees evidence, an **expert** also records similarity feedback (the
only clicks `train --feedback` learns from), an **admin** also changes the archive and reads the audit log.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from chaiderm.errors import DataError
from chaiderm.storage.sessions import Session
from chaiderm.storage.sessions import Sessions as Sessions  # its table lives in storage; imported from here before

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
log = logging.getLogger("chaiderm.serve")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    account: str = ""  # the account's never-reused id ("" for the one person of a server without sign-in)
    credential: str = ""  # a digest of its password hash and role: changes when either does

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


def account_of(record: dict) -> str:
    """The record's account id; users files written before ids existed get one derived from the password
    hash, stable across restarts and different for a user added anew under the same name."""
    return str(record.get("account") or "h-" + hashlib.sha256(str(record["hash"]).encode()).hexdigest()[:32])


def credential_of(record: dict) -> str:
    return hashlib.sha256(f"{record['hash']}\0{record['role']}".encode()).hexdigest()[:32]


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise DataError(None, f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise DataError(None, f"a password has at most {MAX_PASSWORD} characters")
    return password


class Users:
    """The users file: ``{"users": {name: {"role", "hash", "created", "account"}}}``, written atomically
    and readable by its owner only. The server re-reads it when it changes, so an admin's `chaiderm users`
    command takes effect (a removed user is signed out) without a restart."""

    def __init__(self, path: str | Path, *, create: bool = False):
        self.path = Path(path)
        self.lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self.users: dict[str, dict] = {}
        # why the file cannot be used right now (None: it can); see refresh()
        self.broken: str | None = None
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
                if "account" in u and not (isinstance(u["account"], str) and u["account"]):
                    raise ValueError(f"user '{name}' has an empty or non-text account id")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, DataError) as e:
            raise DataError(self.path, f"unreadable users file ({e})") from None
        self.users = users
        self.broken = None
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, ...] | None:
        # the inode and size too: a rewrite within the file system's timestamp tick still counts as a change
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)

    def refresh(self) -> bool:
        """Re-read the file if it changed since it was read; True if it changed.

        A file that cannot be read (a syntax error, a missing field, the file gone) fails closed: ``broken``
        says why, every user is refused until the file is fixed, and the warning is logged once per change.
        Keeping the last good list instead would keep signed in, and let sign in anew, a user whose
        removal was the very edit that went wrong."""
        stamp = self._stat()
        if stamp == self._stamp and stamp is not None:
            return False
        with self.lock:
            if stamp == self._stamp and stamp is not None:
                return False
            was = self.broken
            try:
                self._read()
            except DataError as e:
                self.users = {}
                self.broken = str(e)
                self._stamp = stamp
                if stamp is not None or was is None:
                    log.warning("%s: every sign-in and session is refused until it is fixed", e)
                return True
            if was is not None:
                log.warning("%s: readable again; users may sign in", self.path)
            return True

    def save(self) -> None:
        write_text(self.path, json.dumps({"users": self.users}, indent=2, sort_keys=True) + "\n")
        os.chmod(self.path, 0o600)
        self._stamp = self._stat()

    def add(self, name: str, role: str, password: str, *, replace: bool = False) -> None:
        check_name(name)
        check_role(role)
        check_password(password)
        old = self.users.get(name)
        if old is not None and not replace:
            raise DataError(self.path, f"user '{name}' exists; add --replace to change the role or password")
        # a replaced user keeps their account (their stored queries stay theirs); the new hash ends their sessions
        account = account_of(old) if old is not None else "a-" + secrets.token_hex(16)
        self.users[name] = {"role": role, "hash": _HASHER.hash(password), "created": time.time(), "account": account}
        self.save()

    def remove(self, name: str) -> None:
        if name not in self.users:
            raise DataError(self.path, f"no user '{name}'")
        del self.users[name]
        self.save()

    def get(self, name: str) -> User | None:
        u = self.users.get(name)
        return None if u is None else User(name, u["role"], account_of(u), credential_of(u))

    def current(self, session: Session) -> User | None:
        """The user a session was opened for, if that account still exists with the same password and
        role; None once it was removed, given a new password or role, or its name given to someone else."""
        user = self.get(session.user)
        if user is None or (user.account, user.credential) != (session.account, session.credential):
            return None
        return user

    def keys(self) -> set[tuple[str, str, str]]:
        """(name, account, credential) of every account as it is now: the sessions that may live."""
        return {(u.name, u.account, u.credential) for u in map(self.get, self.users) if u is not None}

    def verify(self, name: str, password: str) -> User | None:
        """The user, if the password is theirs; None otherwise (in about the same time either way)."""
        u = self.users.get(name)
        if len(password) > MAX_PASSWORD:
            return None
        try:
            _HASHER.verify(u["hash"] if u else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            return None
        return self.get(name) if u else None


class SignInThrottle:
    """Failed sign-ins per client address and per account name: the first ``free`` within ``window_s``
    cost nothing more; after them each attempt must wait twice as long as the last (2 s, 4 s, ... up to
    ``cap_s``), answered 429. Counting per name too means that sending each guess from another address
    (or with another forwarded address) does not escape it; a name gets more free failures than an
    address, so that someone else's typos lock a colleague out later, and never for longer than ``cap_s``."""

    def __init__(self, free: int = 5, window_s: float = 900.0, cap_s: float = 300.0, free_per_name: int = 10):
        self.free, self.window_s, self.cap_s, self.free_per_name = free, window_s, cap_s, free_per_name
        self.failures: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def wait(self, address: str, name: str | None = None, now: float | None = None) -> float:
        """Seconds before the next attempt from this address (for this name) may be made (0: go ahead)."""
        now = time.time() if now is None else now
        wait = self._wait("address " + address, self.free, now)
        if name is not None:
            wait = max(wait, self._wait("name " + name, self.free_per_name, now))
        return wait

    def _wait(self, key: str, free: int, now: float) -> float:
        with self.lock:
            seen = self.failures.get(key)
            if not seen:
                return 0.0
            while seen and seen[0] < now - self.window_s:
                seen.popleft()
            over = len(seen) - free + 1
            if over <= 0:
                return 0.0
            return max(0.0, seen[-1] + min(self.cap_s, 2.0**over) - now)

    def failed(self, address: str, name: str | None = None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.lock:
            if len(self.failures) > 100_000:
                self.failures.clear()
            for key in ("address " + address, *(() if name is None else ("name " + name,))):
                self.failures.setdefault(key, deque(maxlen=64)).append(now)

    def succeeded(self, address: str, name: str | None = None) -> None:
        with self.lock:
            self.failures.pop("address " + address, None)
            if name is not None:
                self.failures.pop("name " + name, None)
