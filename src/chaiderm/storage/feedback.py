"""Stored queries and the feedback on them: queried images (by content hash), who posted them, and
"similar / not similar" judgements, in the server's database (write-ahead logging: concurrent clicks are
serialised and a killed server loses no committed row). Also turns the judgements into (query, similar,
not similar) triplets for training."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from chaiderm.errors import DataError
from chaiderm.storage.database import BUSY_TIMEOUT_S, Database

# whose clicks may train the model: experts and admins; "local" is the one person of a server without
# sign-in, and NULL rows predate roles (both single-user set-ups, where that person is the expert)
TRAINING_ROLES = ("expert", "admin", "local")
DAY_S = 86_400.0


def content_id(data: bytes) -> str:
    """Queries are identified by their content: the same image uploaded twice is one query."""
    return hashlib.sha256(data).hexdigest()[:24]


class FeedbackStore:
    """Queries and feedback in the database at ``db`` (a path, or a Database shared with other stores)."""

    def __init__(self, db: Database | str | Path, *, timeout: float = BUSY_TIMEOUT_S):
        self.db = db if isinstance(db, Database) else Database(db, timeout=timeout)
        self.path = self.db.path
        self.timeout = self.db.timeout

    def connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The database's connection for this thread (see Database.connect)."""
        return self.db.connect()

    def add_query(
        self,
        image: bytes,
        archive_id: str | None = None,
        *,
        query_id: str | None = None,
        keep_image: bool = True,
        owner: str | None = None,
        user: str | None = None,
    ) -> str:
        """Record a query (once per content); ``archive_id`` marks an archive case queried as itself,
        which every later search of this query excludes. ``query_id`` (default: the content id of
        ``image``) lets a caller keep the id of the bytes it received while storing others. With
        ``keep_image=False`` (a server that keeps no query images) only the id and time are written.
        ``owner`` (an account id; ``user`` its name) is recorded as one of the query's owners."""
        qid = query_id or content_id(image)
        now = time.time()
        with self.connect() as con:
            con.execute(
                "INSERT OR IGNORE INTO queries(query_id, image, created, archive_id, purged) VALUES (?, ?, ?, ?, ?)",
                (qid, image if keep_image else b"", now, archive_id, None if keep_image else now),
            )
            if keep_image:  # uploaded again after its image was purged: kept again, for a new retention period
                con.execute(
                    "UPDATE queries SET image = ?, purged = NULL, created = ? "
                    "WHERE query_id = ? AND purged IS NOT NULL",
                    (image, now, qid),
                )
            if archive_id is not None:
                con.execute("UPDATE queries SET archive_id = ? WHERE query_id = ?", (archive_id, qid))
            if owner is not None:
                con.execute(
                    "INSERT OR IGNORE INTO query_owners(query_id, owner, user, created) VALUES (?, ?, ?, ?)",
                    (qid, owner, user, now),
                )
        return qid

    def owns(self, query_id: str, owner: str) -> bool:
        """Whether ``owner`` (an account id) posted this query."""
        with self.connect() as con:
            row = con.execute(
                "SELECT 1 FROM query_owners WHERE query_id = ? AND owner = ?", (query_id, owner)
            ).fetchone()
        return row is not None

    def query_record(self, query_id: str) -> tuple[bytes | None, str | None] | None:
        """``(image bytes, archive id or None)`` of a recorded query; the bytes are None once purged."""
        with self.connect() as con:
            row = con.execute(
                "SELECT image, archive_id, purged FROM queries WHERE query_id = ?", (query_id,)
            ).fetchone()
        if row is None:
            return None
        return (None if row[2] is not None else bytes(row[0])), row[1]

    def query_state(self, query_id: str) -> tuple[str, str | None] | None:
        """``(state, archive id or None)`` without reading the image: ``kept``, ``purged`` (erased by the
        retention policy or `chaiderm purge`) or ``not_kept`` (a server that stores no query images wrote
        only the row: its purge time is its creation time); None for an unknown query."""
        with self.connect() as con:
            row = con.execute(
                "SELECT archive_id, created, purged FROM queries WHERE query_id = ?", (query_id,)
            ).fetchone()
        if row is None:
            return None
        archive_id, created, purged = row
        state = "kept" if purged is None else "not_kept" if purged == created else "purged"
        return state, archive_id

    def query_image(self, query_id: str) -> bytes | None:
        rec = self.query_record(query_id)
        return None if rec is None else rec[0]

    def purge(self, older_than_days: float, *, now: float | None = None) -> int:
        """Erase the images of queries recorded more than ``older_than_days`` ago; the rows (and the
        feedback on them) stay. Freed pages are overwritten (secure_delete), not merely unlinked."""
        if not older_than_days >= 0:  # NaN compares false with everything and would erase nothing, silently
            raise ValueError("older_than_days must be >= 0")
        cutoff = (time.time() if now is None else now) - older_than_days * DAY_S
        with self.connect() as con:
            con.execute("PRAGMA secure_delete=ON")
            cur = con.execute(
                "UPDATE queries SET image = x'', purged = ? WHERE purged IS NULL AND created <= ?",
                (time.time(), cutoff),
            )
            n = cur.rowcount
        if n:
            with self.connect() as con, contextlib.suppress(DataError):
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old images leave the WAL file too
        return int(n)

    def add_feedback(
        self, query_id: str, image_id: str, relevant: bool, *, user: str | None = None, role: str | None = None
    ) -> int:
        with self.connect() as con:
            if con.execute("SELECT 1 FROM queries WHERE query_id = ?", (query_id,)).fetchone() is None:
                raise KeyError(query_id)
            cur = con.execute(
                "INSERT INTO feedback(query_id, image_id, relevant, created, user, role) VALUES (?, ?, ?, ?, ?, ?)",
                (query_id, image_id, int(bool(relevant)), time.time(), user, role),
            )
            return int(cur.lastrowid)

    def count_feedback(self) -> int:
        with self.connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def judgements(self, roles: tuple[str, ...] | None = None) -> dict[str, dict[str, bool]]:
        """``{query_id: {image_id: relevant}}``, the latest click per (query, image) winning; with
        ``roles``, only clicks by those roles (and rows from before roles were recorded)."""
        out: dict[str, dict[str, bool]] = {}
        sql = "SELECT query_id, image_id, relevant FROM feedback"
        args: tuple = ()
        if roles is not None:
            sql += f" WHERE role IS NULL OR role IN ({','.join('?' * len(roles))})"
            args = tuple(roles)
        with self.connect() as con:
            for qid, iid, rel in con.execute(sql + " ORDER BY id", args):
                out.setdefault(qid, {})[iid] = bool(rel)
        return out

    def count_by_role(self) -> dict[str, int]:
        with self.connect() as con:
            return {str(r): int(n) for r, n in con.execute("SELECT role, COUNT(*) FROM feedback GROUP BY role")}


@dataclass
class FeedbackTriplets:
    """Query images (encoded bytes) and triplets (query index, similar image id, not-similar image id)."""

    query_images: list[bytes]
    triplets: list[tuple[int, str, str]]
    unknown_ids: int = 0
    purged_queries: int = 0  # judged queries whose image the retention policy erased: not usable
    other_roles: int = 0  # clicks by roles that do not train (viewers)


def read_feedback_triplets(path: str | Path, known_ids: set[str] | None = None) -> FeedbackTriplets:
    """Every (similar, not similar) pair judged on the same query becomes one triplet."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "feedback database not found")
    store = FeedbackStore(path)
    images: list[bytes] = []
    triplets: list[tuple[int, str, str]] = []
    unknown = purged = 0
    other = store.count_feedback() - sum(n for r, n in store.count_by_role().items() if r in (*TRAINING_ROLES, "None"))
    for qid, judged in store.judgements(TRAINING_ROLES).items():
        if known_ids is not None:
            unknown += sum(1 for i in judged if i not in known_ids)
            judged = {i: r for i, r in judged.items() if i in known_ids}
        pos = sorted(i for i, r in judged.items() if r)
        neg = sorted(i for i, r in judged.items() if not r)
        if not pos or not neg:
            continue
        img = store.query_image(qid)
        if img is None:
            purged += 1
            continue
        images.append(img)
        triplets += [(len(images) - 1, p, n) for p in pos for n in neg]
    return FeedbackTriplets(images, triplets, unknown, purged, other)
