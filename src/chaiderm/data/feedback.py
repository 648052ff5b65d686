"""User feedback storage: queried images (by content hash) and "similar / not similar" judgements,
in SQLite with write-ahead logging, so concurrent clicks are serialised and a killed server loses no
committed row. Also turns the judgements into (query, similar, not similar) triplets for training."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chaiderm.errors import DataError

SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    image BLOB NOT NULL,
    created REAL NOT NULL,
    archive_id TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL REFERENCES queries(query_id),
    image_id TEXT NOT NULL,
    relevant INTEGER NOT NULL CHECK (relevant IN (0, 1)),
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_query ON feedback(query_id);
"""


def content_id(data: bytes) -> str:
    """Queries are identified by their content: the same image uploaded twice is one query."""
    return hashlib.sha256(data).hexdigest()[:24]


# a locked or failing database must answer within a second (the page says so and the click can be
# retried) instead of holding a request for half a minute and then losing it
BUSY_TIMEOUT_S = 0.8


class FeedbackStore:
    def __init__(self, path: str | Path, *, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.timeout = timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(self.path, f"cannot create the database's folder ({e.strerror})") from None
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            cols = {r[1] for r in con.execute("PRAGMA table_info(queries)")}
            if "archive_id" not in cols:  # databases from before archive queries were remembered
                con.execute("ALTER TABLE queries ADD COLUMN archive_id TEXT")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # a connection per operation: safe across server threads; the busy timeout queues writers
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise DataError(self.path, f"cannot open the feedback database ({e})", code="unavailable") from None
        try:
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        except sqlite3.OperationalError as e:
            # locked, busy, read-only, disk full: nothing was written; the caller reports it
            raise DataError(self.path, f"feedback database unavailable ({e})", code="unavailable") from None
        except sqlite3.DatabaseError as e:
            raise DataError(self.path, f"feedback database error ({e})", code="unavailable") from None
        finally:
            con.close()

    def add_query(self, image: bytes, archive_id: str | None = None, *, query_id: str | None = None) -> str:
        """Store a queried image (once per content); ``archive_id`` marks an archive case queried as
        itself, which every later search of this query excludes. ``query_id`` (default: the content id
        of ``image``) lets a caller keep the id of the bytes it received while storing others."""
        qid = query_id or content_id(image)
        with self._connect() as con:
            con.execute(
                "INSERT OR IGNORE INTO queries(query_id, image, created, archive_id) VALUES (?, ?, ?, ?)",
                (qid, image, time.time(), archive_id),
            )
            if archive_id is not None:
                con.execute("UPDATE queries SET archive_id = ? WHERE query_id = ?", (archive_id, qid))
        return qid

    def query_record(self, query_id: str) -> tuple[bytes, str | None] | None:
        """``(image bytes, archive id or None)`` of a stored query."""
        with self._connect() as con:
            row = con.execute("SELECT image, archive_id FROM queries WHERE query_id = ?", (query_id,)).fetchone()
        return None if row is None else (bytes(row[0]), row[1])

    def query_image(self, query_id: str) -> bytes | None:
        rec = self.query_record(query_id)
        return None if rec is None else rec[0]

    def add_feedback(self, query_id: str, image_id: str, relevant: bool) -> int:
        with self._connect() as con:
            if con.execute("SELECT 1 FROM queries WHERE query_id = ?", (query_id,)).fetchone() is None:
                raise KeyError(query_id)
            cur = con.execute(
                "INSERT INTO feedback(query_id, image_id, relevant, created) VALUES (?, ?, ?, ?)",
                (query_id, image_id, int(bool(relevant)), time.time()),
            )
            return int(cur.lastrowid)

    def count_feedback(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def judgements(self) -> dict[str, dict[str, bool]]:
        """``{query_id: {image_id: relevant}}``, the latest click per (query, image) winning."""
        out: dict[str, dict[str, bool]] = {}
        with self._connect() as con:
            for qid, iid, rel in con.execute("SELECT query_id, image_id, relevant FROM feedback ORDER BY id"):
                out.setdefault(qid, {})[iid] = bool(rel)
        return out


@dataclass
class FeedbackTriplets:
    """Query images (encoded bytes) and triplets (query index, similar image id, not-similar image id)."""

    query_images: list[bytes]
    triplets: list[tuple[int, str, str]]
    unknown_ids: int = 0


def read_feedback_triplets(path: str | Path, known_ids: set[str] | None = None) -> FeedbackTriplets:
    """Every (similar, not similar) pair judged on the same query becomes one triplet."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "feedback database not found")
    store = FeedbackStore(path)
    images: list[bytes] = []
    triplets: list[tuple[int, str, str]] = []
    unknown = 0
    for qid, judged in store.judgements().items():
        if known_ids is not None:
            unknown += sum(1 for i in judged if i not in known_ids)
            judged = {i: r for i, r in judged.items() if i in known_ids}
        pos = sorted(i for i, r in judged.items() if r)
        neg = sorted(i for i, r in judged.items() if not r)
        if not pos or not neg:
            continue
        img = store.query_image(qid)
        if img is None:
            continue
        images.append(img)
        triplets += [(len(images) - 1, p, n) for p in pos for n in neg]
    return FeedbackTriplets(images, triplets, unknown)
