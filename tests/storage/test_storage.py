"""The server's database: schema versions, upgrades in place of files written by earlier releases, and the
stores reading every row of them afterwards."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chaiderm.errors import DataError
from chaiderm.storage import (
    SCHEMA_VERSION,
    AuditLog,
    Database,
    FeedbackStore,
    Sessions,
    migrations,
    read_feedback_triplets,
)

# written by the release before schema versions (tests/storage/fixtures/make_server_db_v0.py)
V0 = Path(__file__).parent / "fixtures" / "server-db-v0.sqlite3"
TABLES = ("queries", "feedback", "query_owners", "audit", "sessions")
VERA, ANN = "a-0000000000000000000000000000vera", "a-00000000000000000000000000000ann"


def _rows(path: Path, tables: tuple[str, ...] = TABLES) -> dict[str, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    finally:
        con.close()


def _columns(path: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(path)
    try:
        return {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    finally:
        con.close()


def _user_version(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def v0(tmp_path) -> Path:
    copy = tmp_path / "server.db"
    shutil.copyfile(V0, copy)
    return copy


def test_the_fixture_is_a_database_from_before_schema_versions():
    assert _user_version(V0) == 0
    rows = _rows(V0)
    assert [len(rows[t]) for t in TABLES] == [4, 5, 4, 7, 2]


def test_a_database_written_before_schema_versions_is_upgraded_in_place_and_every_row_read(v0, tmp_path):
    before = _rows(v0)
    db = Database(v0)
    assert db.version == SCHEMA_VERSION and _user_version(v0) == SCHEMA_VERSION
    assert _rows(v0) == before  # nothing rewritten, nothing lost
    fresh = tmp_path / "fresh.db"
    Database(fresh).close()
    assert _columns(v0) == _columns(fresh)  # the same schema as a database created today

    store = FeedbackStore(db)
    queries = [r[0] for r in before["queries"]]
    purged, kept, not_kept, case = queries
    assert store.query_state(purged) == ("purged", None)
    assert store.query_state(kept) == ("kept", None)
    assert store.query_state(not_kept) == ("not_kept", None)
    assert store.query_state(case) == ("kept", "SYN_train_00005")
    assert store.query_image(purged) is None and store.query_image(not_kept) is None
    assert store.query_image(kept).startswith(b"\x89PNG")
    assert store.owns(kept, VERA) and store.owns(kept, ANN) and store.owns(purged, VERA)
    assert not store.owns(purged, ANN) and not store.owns(case, VERA)
    assert store.count_feedback() == 5
    assert store.count_by_role() == {"expert": 3, "viewer": 1, "local": 1}
    assert store.judgements() == {
        purged: {"SYN_train_00001": True, "SYN_train_00002": False},
        kept: {"SYN_train_00003": True, "SYN_train_00004": False},
    }
    fb = read_feedback_triplets(v0)
    assert fb.triplets == [(0, "SYN_train_00003", "SYN_train_00004")]
    assert (fb.purged_queries, fb.other_roles) == (1, 1)

    log = AuditLog(db)
    entries = log.entries()
    assert [e.action for e in entries] == [
        "sign_in", "query", "feedback", "query", "archive_add", "purge", "view_query",
    ]  # fmt: skip
    assert entries[2].user == "ann" and entries[2].status == 403 and entries[2].address == "10.0.0.2"
    assert [e.action for e in log.entries(user="vera")] == ["sign_in", "query"]
    with sqlite3.connect(v0) as con, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM audit")  # still append-only

    # the sessions are read with their accounts: only vera's account as it is now keeps hers
    sessions = Sessions(db)
    assert sessions.retain({("vera", VERA, "c-vera")}) == 1
    assert [r[1] for r in _rows(v0)["sessions"]] == ["vera"]

    # and the upgraded file takes new rows
    qid = store.add_query(b"x", owner=ANN, user="ann")
    store.add_feedback(qid, "SYN_train_00006", True, user="ann", role="expert")
    log.record("query", user="ann", target=qid)
    assert store.owns(qid, ANN) and store.count_feedback() == 6 and len(log.entries()) == 8


def test_opening_a_current_database_again_changes_nothing(v0):
    Database(v0).close()
    upgraded = _digest(v0)
    for _ in range(2):
        db = Database(v0)
        assert db.version == SCHEMA_VERSION
        FeedbackStore(db), AuditLog(db), Sessions(db)
        db.close()
        assert _digest(v0) == upgraded


def test_a_database_from_before_the_added_columns_is_upgraded_in_place(tmp_path):
    """The first release's shape: queries without archive ids or purge times, feedback without users or
    roles, sessions not bound to accounts, and neither query owners nor an audit log."""
    path = tmp_path / "first.db"
    with sqlite3.connect(path) as con:
        con.executescript(
            "CREATE TABLE queries (query_id TEXT PRIMARY KEY, image BLOB NOT NULL, created REAL NOT NULL);"
            "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, query_id TEXT NOT NULL "
            "REFERENCES queries(query_id), image_id TEXT NOT NULL, relevant INTEGER NOT NULL "
            "CHECK (relevant IN (0, 1)), created REAL NOT NULL);"
            "CREATE INDEX feedback_query ON feedback(query_id);"
            "CREATE TABLE sessions (token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, kind TEXT NOT NULL "
            "CHECK (kind IN ('cookie', 'token')), csrf TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL);"
            "INSERT INTO queries VALUES ('q1', x'78', 1.0), ('q2', x'79', 2.0);"
            "INSERT INTO feedback(query_id, image_id, relevant, created) VALUES ('q1', 'A', 1, 3.0), "
            "('q1', 'B', 0, 4.0), ('q2', 'A', 0, 5.0);"
            "INSERT INTO sessions VALUES ('h', 'vera', 'cookie', 'c', 1.0, 9e99);"
        )
    con.close()
    before = _rows(path, ("queries", "feedback", "sessions"))
    db = Database(path)
    assert db.version == SCHEMA_VERSION and _user_version(path) == SCHEMA_VERSION
    fresh = tmp_path / "fresh.db"
    Database(fresh).close()
    assert _columns(path) == _columns(fresh)
    after = _rows(path, ("queries", "feedback", "sessions"))
    for table, rows in before.items():  # every row kept, the added columns empty
        assert [r[: len(rows[0])] for r in after[table]] == rows
        assert all(v is None for r in after[table] for v in r[len(rows[0]) :])

    store = FeedbackStore(db)
    assert store.query_state("q1") == ("kept", None) and store.query_image("q2") == b"y"
    assert store.judgements() == {"q1": {"A": True, "B": False}, "q2": {"A": False}}
    assert store.count_by_role() == {"None": 3}
    assert read_feedback_triplets(path).triplets == [(0, "A", "B")]  # rows without roles still train
    assert not store.owns("q1", VERA)  # no owners recorded then: only admins see these
    assert AuditLog(db).entries() == []
    # a session from before accounts is no longer valid: the server's start-up removes it
    assert Sessions(db).retain({("vera", VERA, "c")}) == 1


def test_a_new_database_has_the_current_schema(tmp_path):
    path = tmp_path / "sub" / "new.db"
    db = Database(path)
    assert db.version == SCHEMA_VERSION == _user_version(path) == len(migrations.MIGRATIONS)
    assert all(_columns(path).values())
    with db.connect() as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_of_a_newer_chaiderm_is_refused_unchanged(v0):
    Database(v0).close()
    with sqlite3.connect(v0) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    before = _digest(v0)
    with pytest.raises(DataError, match="newer chaiderm") as e:
        FeedbackStore(v0)
    assert "\n" not in str(e.value) and str(v0) in str(e.value)
    assert _digest(v0) == before

    from chaiderm.cli import app

    r = CliRunner().invoke(app, ["audit", "--db", str(v0)])
    assert r.exit_code != 0 and "newer chaiderm" in r.output and "Traceback" not in r.output


def test_a_migration_that_fails_leaves_the_database_at_the_version_before(tmp_path, monkeypatch):
    path = tmp_path / "db"
    Database(path).close()

    def half_done(con: sqlite3.Connection, path: Path) -> None:
        con.execute("CREATE TABLE half (x)")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, migrations.Migration(2, "t", half_done)))
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 2)
    with pytest.raises(RuntimeError, match="interrupted"):
        Database(path)
    assert _user_version(path) == 1
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None
    con.close()

    monkeypatch.setattr(
        migrations, "MIGRATIONS", (*migrations.MIGRATIONS[:1], migrations.Migration(2, "t", lambda c, p: None))
    )
    assert Database(path).version == 2 == _user_version(path)


def test_connections_opening_an_old_database_at_once_upgrade_it_once(v0):
    before = _rows(v0)
    versions, errors = [], []

    def open_it():
        try:
            versions.append(Database(v0, timeout=30).version)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and versions == [SCHEMA_VERSION] * 4
    assert _rows(v0) == before


def test_a_database_of_something_else_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE queries (name TEXT, sql TEXT)")
    con.close()
    with pytest.raises(DataError, match="not a chaiderm server database"):
        Database(path)
    assert _user_version(path) == 0


def test_stores_built_from_one_another_share_the_database(tmp_path):
    store = FeedbackStore(tmp_path / "db")
    assert AuditLog(store).db is store.db and Sessions(store).db is store.db


def test_the_old_import_paths_still_work():
    import chaiderm.storage as storage
    from chaiderm.data import audit, feedback
    from chaiderm.web import auth

    assert feedback.FeedbackStore is storage.FeedbackStore
    assert feedback.read_feedback_triplets is storage.read_feedback_triplets
    assert feedback.content_id is storage.content_id
    for name in ("AuditLog", "ACTIONS", "Entry", "parse_time", "to_csv"):
        assert getattr(audit, name) is getattr(storage, name)
    assert auth.Sessions is storage.Sessions and auth.Session is storage.Session
