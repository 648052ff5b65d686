"""Who is signed in, for how long, and who sees what: sessions bound to the account and its credential, a
users file that fails closed, the sign-in throttle behind a proxy, refusals in the audit log, queries
seen by their owners only, session fixation and cookie flags."""

import contextlib
import json
import logging
import sqlite3

import pytest
from fastapi.testclient import TestClient

from chaiderm.data.feedback import FeedbackStore
from chaiderm.web import routers
from chaiderm.web.app import create_app
from chaiderm.web.auth import COOKIE, SignInThrottle, Users
from tests.web.test_clinic import PASSWORD, _cli, _png

NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def make(served, tmp_path, monkeypatch):
    """A signed-in server on its own users file (viewer, expert, admin, vera: a viewer) and database."""
    monkeypatch.setattr(routers.session, "FAILED_DELAY_S", 0.0)
    path = tmp_path / "users.json"
    uf = Users(path, create=True)
    for name, role in (("viewer", "viewer"), ("expert", "expert"), ("admin", "admin"), ("vera", "viewer")):
        uf.add(name, role, PASSWORD)

    with contextlib.ExitStack() as stack:

        def start(client: tuple[str, int] = ("testclient", 50000), **kw) -> TestClient:
            app = create_app(served / "run", served / "ix", tmp_path / "fb.db", max_upload=200_000, users=path, **kw)
            c = stack.enter_context(TestClient(app, client=client))
            c.users, c.db = path, tmp_path / "fb.db"
            return c

        yield start


def _token(c, name, password=PASSWORD):
    r = c.post("/api/token", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _cookie_session(c, name, password=PASSWORD):
    """A browser's session: its cookie value and CSRF token (the client's cookie jar is left empty)."""
    r = c.post("/api/session", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    value = c.cookies.get(COOKIE)
    c.cookies.clear()
    return value, r.json()["csrf_token"]


def _me(c, headers=None, cookie=None):
    c.cookies.clear()
    if cookie is not None:
        c.cookies.set(COOKIE, cookie)
    r = c.get("/api/me", headers=headers or {})
    c.cookies.clear()
    return r


def _audit(c, action):
    return c.get(f"/api/audit?action={action}", headers=_token(c, "admin")).json()


def test_a_password_change_ends_every_session_at_once(make):
    c = make()
    bearer = _token(c, "vera")
    cookie, _ = _cookie_session(c, "vera")
    others = _token(c, "viewer")
    assert _me(c, bearer).status_code == 200 and _me(c, cookie=cookie).status_code == 200
    r = _cli("users", "add", "vera", "--role", "viewer", "--replace", "--users", str(c.users), "--password-stdin",
             stdin=NEW_PASSWORD + "\n")  # fmt: skip
    assert r.returncode == 0 and "sessions" in r.stderr + r.stdout, r.stderr
    assert _me(c, bearer).status_code == 401  # at the very next request, not after a cache or a restart
    assert _me(c, cookie=cookie).status_code == 401
    assert _me(c, others).status_code == 200  # nobody else is signed out
    assert c.post("/api/token", json={"name": "vera", "password": PASSWORD}).status_code == 401
    assert _me(c, _token(c, "vera", NEW_PASSWORD)).json()["name"] == "vera"
    # the old sessions are gone from the database too: a users file restored from a backup does not revive them
    assert _sessions(c.db, "vera") == 1


def _sessions(db, name: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM sessions WHERE user = ?", (name,)).fetchone()[0]


def test_a_removed_users_token_never_comes_back_and_role_changes_end_sessions(make):
    c = make()
    gone = _token(c, "vera")
    Users(c.users).remove("vera")
    assert _me(c, gone).status_code == 401
    Users(c.users).add("vera", "admin", PASSWORD)  # someone else, the same name, the same password
    assert _me(c, gone).status_code == 401
    assert c.get("/api/audit", headers=gone).status_code == 401
    assert _me(c, _token(c, "vera")).json()["role"] == "admin"  # the new account signs in as itself
    # a role change, even with the same password, ends the sessions opened under the old role
    expert = _token(c, "expert")
    Users(c.users).add("expert", "viewer", PASSWORD, replace=True)
    assert _me(c, expert).status_code == 401


def test_a_users_file_from_before_account_ids_still_loads(make):
    c = make()
    raw = json.loads(c.users.read_text())
    for u in raw["users"].values():
        u.pop("account")
    c.users.write_text(json.dumps(raw))  # as written by an older chaiderm
    c = make()
    token = _token(c, "vera")
    assert _me(c, token).status_code == 200
    c.users.write_text(c.users.read_text() + "\n")  # rewritten, unchanged: the sessions live on
    assert _me(c, token).status_code == 200
    old_hash = raw["users"]["vera"]["hash"]
    Users(c.users).add("vera", "viewer", NEW_PASSWORD, replace=True)
    assert _me(c, token).status_code == 401
    kept = json.loads(c.users.read_text())["users"]["vera"]
    assert kept["account"].startswith("h-") and kept["hash"] != old_hash  # the account id is kept, made explicit


def test_an_unreadable_users_file_refuses_everyone_until_fixed(make, caplog):
    c = make()
    viewer, vera = _token(c, "viewer"), _token(c, "vera")
    good = json.loads(c.users.read_text())
    del good["users"]["vera"]  # the edit that went wrong was meant to remove vera
    c.users.write_text(json.dumps(good)[:-3] + ",,}")
    with caplog.at_level(logging.WARNING, logger="chaiderm.serve"):
        for headers in (viewer, vera, viewer):
            r = _me(c, headers)
            assert r.status_code == 503 and "users file is unreadable" in r.json()["detail"]
        r = c.post("/api/session", json={"name": "vera", "password": PASSWORD})
        assert r.status_code == 503 and "users file is unreadable" in r.json()["detail"]
    warnings = [m for m in caplog.messages if "unreadable users file" in m]
    assert len(warnings) == 1 and str(c.users) in warnings[0]  # once per change, naming the file
    assert c.get("/healthz").status_code == 200  # health checks still answer
    c.users.write_text(json.dumps(good))
    assert _me(c, viewer).status_code == 200
    assert _me(c, vera).status_code == 401
    assert c.post("/api/token", json={"name": "vera", "password": PASSWORD}).status_code == 401


def test_throttle_counts_per_name_too():
    t = SignInThrottle(free=5, window_s=100, cap_s=30, free_per_name=3)
    for i in range(4):
        t.failed(f"10.0.0.{i}", "vera", now=1000 + i)
    assert t.wait("10.0.0.99", "vera", now=1003) == pytest.approx(4.0)  # a fresh address does not escape it
    assert t.wait("10.0.0.99", "viewer", now=1003) == 0
    t.succeeded("10.0.0.5", "vera")
    assert t.wait("10.0.0.99", "vera", now=1003) == 0


def test_behind_the_proxy_rotating_forwarded_addresses_neither_escapes_nor_invents(make):
    c = make(client=("127.0.0.1", 40000), behind_proxy=True)  # what the proxy (or any local process) looks like
    for i in range(12):
        r = c.post(
            "/api/session",
            json={"name": "vera", "password": "wrong password"},
            headers={"X-Forwarded-For": f"203.0.113.{i}"},
        )
        if r.status_code == 429:
            break
    assert r.status_code == 429, "rotating X-Forwarded-For escaped the throttle"
    r = c.post("/api/token", json={"name": "vera", "password": PASSWORD}, headers={"X-Forwarded-For": "198.51.100.1"})
    assert r.status_code == 429  # even the right password waits, whatever address it claims
    for forwarded in ("<script>, 192.0.2.77", "definitely-not-an-ip"):
        c.post("/api/session", json={"name": "nobody", "password": "x"}, headers={"X-Forwarded-For": forwarded})
    rows = c.get("/api/audit?action=sign_in_failed", headers=_token(c, "admin")).json()
    addresses = [e["address"] for e in rows]
    assert addresses[0] == "203.0.113.0 via 127.0.0.1"  # what the proxy said, and the connection it came on
    assert addresses[-2:] == ["192.0.2.77 via 127.0.0.1", "127.0.0.1"]  # the proxy's own (last) value only
    assert not any("script" in a or "definitely" in a for a in addresses)


def test_csrf_and_session_refusals_are_audited(make, synth_dir):
    c = make()
    cookie, csrf = _cookie_session(c, "expert")
    c.cookies.set(COOKIE, cookie)
    files = {"image": ("q.png", _png(synth_dir), "image/png")}
    assert c.post("/api/query", files=files).status_code == 403
    assert c.post("/api/query", files=files, headers={"X-CSRF-Token": "forged"}).status_code == 403
    c.cookies.clear()
    assert c.get("/api/info", headers={"Authorization": "Bearer not-a-session"}).status_code == 401
    vera = _token(c, "vera")
    Users(c.users).remove("vera")
    assert _me(c, vera).status_code == 401
    assert c.get("/api/info").status_code == 401  # no credential at all: the access log's, not the audit's
    rows = [(e["user"], e["status"], e["target"], e["detail"]) for e in _audit(c, "refused")]
    assert rows == [
        ("expert", 403, "/api/query", "missing CSRF token"),
        ("expert", 403, "/api/query", "wrong CSRF token"),
        (None, 401, "/api/info", "no such session (token)"),
        (None, 401, "/api/me", "no such session (token)"),  # vera's sessions were deleted with her account
    ]
    assert all(e["address"] for e in _audit(c, "refused"))


def test_a_viewer_sees_only_their_own_queries(make, synth_dir):
    c = make()
    viewer, vera, expert, admin = (_token(c, n) for n in ("viewer", "vera", "expert", "admin"))
    files = {"image": ("q.png", _png(synth_dir, "SYN_test_00004.png"), "image/png")}
    q = c.post("/api/query", files=files, headers=vera).json()
    qid, n = q["query_id"], q["neighbors"][0]
    routes = [
        f"/api/query/{qid}",
        f"/api/query/{qid}?k=5",
        q["query_image_url"],
        n["qam_url"],
        n["ram_url"],
    ]
    for url in routes:
        assert c.get(url, headers=vera).status_code == 200, url
        assert c.get(url, headers=admin).status_code == 200, url  # admins see every query
        for other in (viewer, expert):
            r = c.get(url, headers=other)
            # 404 as for an id that does not exist: another user's query is not even confirmed to exist
            assert r.status_code == 404 and r.json()["detail"] == f"unknown query '{qid}'", url
    body = {"query_id": qid, "image_id": n["image_id"], "relevant": True}
    assert c.post("/api/feedback", json=body, headers=expert).status_code == 404
    # the same image posted by another user: one query, seen by both
    assert c.post("/api/query", files=files, headers=expert).json()["query_id"] == qid
    assert c.get(f"/api/query/{qid}", headers=expert).status_code == 200
    assert c.post("/api/feedback", json=body, headers=expert).status_code == 200
    assert c.get(f"/api/query/{qid}", headers=vera).status_code == 200
    assert c.get(f"/api/query/{qid}", headers=viewer).status_code == 404
    # a removed user's queries do not pass to a new user of the same name
    Users(c.users).remove("vera")
    Users(c.users).add("vera", "viewer", PASSWORD)
    assert c.get(f"/api/query/{qid}", headers=_token(c, "vera")).status_code == 404


def test_an_older_database_gains_query_owners_in_place(tmp_path, synth_dir):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:  # the first release's schema, with one query in it
        con.executescript(
            "CREATE TABLE queries (query_id TEXT PRIMARY KEY, image BLOB NOT NULL, created REAL NOT NULL);"
            "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, query_id TEXT NOT NULL, "
            "image_id TEXT NOT NULL, relevant INTEGER NOT NULL, created REAL NOT NULL);"
            "INSERT INTO queries VALUES ('old', x'00', 0);"
        )
    store = FeedbackStore(db)
    assert not store.owns("old", "a-1")  # an old query has no owner: only admins see it
    qid = store.add_query(_png(synth_dir), owner="a-1", user="vera")
    assert store.owns(qid, "a-1") and not store.owns(qid, "a-2")


def test_a_cookie_set_before_sign_in_is_never_adopted(make):
    c = make()
    c.cookies.set(COOKIE, "chosen-by-an-attacker")
    assert c.get("/api/me").status_code == 401
    r = c.post("/api/session", json={"name": "vera", "password": PASSWORD})
    assert r.status_code == 200
    issued = r.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert issued != "chosen-by-an-attacker" and len(issued) >= 40
    assert _me(c, cookie="chosen-by-an-attacker").status_code == 401
    # signing in again replaces a live session's cookie with a new one
    r = c.post("/api/session", json={"name": "vera", "password": PASSWORD})
    assert r.headers["set-cookie"].split(";")[0].split("=", 1)[1] != issued


@pytest.mark.parametrize("secure", [False, True])
def test_cookie_flags(make, secure):
    c = make(secure_cookies=secure)
    r = c.post("/api/session", json={"name": "vera", "password": PASSWORD})
    flags = [f.strip().lower() for f in r.headers["set-cookie"].split(";")[1:]]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert ("secure" in flags) is secure  # Secure under TLS (--ssl-*) or behind the HTTPS proxy
    csrf = r.json()["csrf_token"]
    if secure:  # a secure cookie is sent back over https only
        c.base_url = "https://testserver"
    out = c.post("/api/session/end", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    ended = [f.strip().lower() for f in out.headers["set-cookie"].split(";")]
    assert "httponly" in ended and "samesite=strict" in ended and ("secure" in ended) is secure


def test_a_server_starting_ends_the_sessions_of_accounts_changed_meanwhile(make):
    c = make()
    _token(c, "vera")
    _token(c, "viewer")
    Users(c.users).add("vera", "viewer", NEW_PASSWORD, replace=True)  # no request reaches the first server
    make()
    assert _sessions(c.db, "vera") == 0 and _sessions(c.db, "viewer") == 1
