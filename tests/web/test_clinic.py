"""A clinic's server: sign-in, roles per route, CSRF, throttling, audit, retention, metrics, parallel
inference, and the CLI that sets them up."""

import csv
import io
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from chaiderm.data.audit import AuditLog
from chaiderm.data.feedback import FeedbackStore, read_feedback_triplets
from chaiderm.web import routers
from chaiderm.web.app import create_app
from chaiderm.web.auth import COOKIE, SignInThrottle, Users

PASSWORD = "correct horse battery"
ROLES = ("viewer", "expert", "admin")


def _png(synth_dir, name="SYN_test_00000.png") -> bytes:
    return (synth_dir / "test" / "images" / name).read_bytes()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "users.json"
    uf = Users(path, create=True)
    for role in ROLES:
        uf.add(role, role, PASSWORD)
    return path


@pytest.fixture
def clinic(served, users_file, tmp_path, monkeypatch):
    monkeypatch.setattr(routers.session, "FAILED_DELAY_S", 0.0)
    ix = tmp_path / "ix"
    shutil.copytree(served / "ix", ix)  # admin routes change the archive
    app = create_app(served / "run", ix, tmp_path / "fb.db", max_upload=200_000, users=users_file)
    with TestClient(app) as c:
        c.db = tmp_path / "fb.db"
        c.tokens = {r: c.post("/api/token", json={"name": r, "password": PASSWORD}).json()["token"] for r in ROLES}
        yield c


def _as(c, role):
    return {"Authorization": f"Bearer {c.tokens[role]}"} if role else {}


def _query(c, synth_dir, role="viewer", name="SYN_test_00000.png"):
    r = c.post("/api/query", files={"image": ("q.png", _png(synth_dir, name), "image/png")}, headers=_as(c, role))
    assert r.status_code == 200, r.text
    return r.json()


# every route, every role: (method, path template) -> lowest role that may use it ("public": anyone)
NEEDS = {
    ("GET", "/healthz"): "public",
    ("GET", "/login"): "public",
    ("POST", "/api/session"): "public",
    ("POST", "/api/token"): "public",
    ("GET", "/"): "viewer",
    ("GET", "/api/me"): "viewer",
    ("POST", "/api/session/end"): "viewer",
    ("GET", "/api/info"): "viewer",
    ("POST", "/api/query"): "viewer",
    ("GET", "/api/query/{query_id}"): "viewer",
    ("GET", "/api/queries/{query_id}/image.png"): "viewer",
    ("GET", "/api/maps/{query_id}/{image_id}/{kind}.png"): "viewer",
    ("GET", "/api/images/{image_id}"): "viewer",
    ("GET", "/api/archive"): "viewer",
    ("POST", "/api/feedback"): "expert",
    ("POST", "/api/archive"): "admin",
    ("DELETE", "/api/archive/{image_id}"): "admin",
    ("GET", "/api/audit"): "admin",
    ("GET", "/metrics"): "admin",
    ("GET", "/openapi.json"): "viewer",
    ("GET", "/api/pacs"): "viewer",
    ("GET", "/api/pacs/studies/{study}"): "viewer",
    ("POST", "/api/pacs/query"): "viewer",
    ("POST", "/api/pacs/store"): "expert",
}
# this server reads no PACS: a role allowed a PACS route is told so (404, or 422 for a body it cannot read
# first); tests/pacs/test_pacs.py runs them against a real Orthanc
NO_PACS = {404, 422}
RANK = {"public": -1, "viewer": 0, "expert": 1, "admin": 2}


def test_the_table_covers_every_route(clinic):
    schema = clinic.get("/openapi.json", headers=_as(clinic, "viewer")).json()
    routes = {(m.upper(), path) for path, ops in schema["paths"].items() for m in ops} | {("GET", "/openapi.json")}
    assert routes == set(NEEDS), "a route was added or removed: put it in NEEDS with the role it needs"


def _request(c, synth_dir, method, path, role, qid):
    headers = _as(c, role)
    real = path.replace("{query_id}", qid).replace("{image_id}", "SYN_train_00001").replace("{kind}", "qam")
    if (method, path) == ("POST", "/api/query"):
        return c.post(real, files={"image": ("q.png", _png(synth_dir), "image/png")}, headers=headers)
    if (method, path) == ("POST", "/api/feedback"):
        return c.post(real, json={"query_id": qid, "image_id": "SYN_train_00001", "relevant": True}, headers=headers)
    if (method, path) == ("POST", "/api/archive"):
        return c.post(
            real,
            files={"image": ("new.png", _png(synth_dir, "SYN_test_00003.png"), "image/png")},
            data={"image_id": f"NEW_{role}", "diagnosis": "nevus"},
            headers=headers,
        )
    if (method, path) in {("POST", "/api/session"), ("POST", "/api/token")}:
        return c.post(real, json={"name": "viewer", "password": PASSWORD})
    if method == "DELETE":
        real = real.replace("SYN_train_00001", "SYN_train_00002")
    return c.request(method, real, headers=headers)


@pytest.mark.parametrize("role", [None, *ROLES])
def test_route_by_role(clinic, synth_dir, role):
    qid = _query(clinic, synth_dir, role or "viewer")["query_id"]  # its own (others: test_auth.py)
    for (method, path), needs in NEEDS.items():
        if (method, path) == ("POST", "/api/session/end"):
            continue  # would end this role's token: checked in its own test
        r = _request(clinic, synth_dir, method, path, role, qid)
        clinic.cookies.clear()  # signing in set a cookie: each request is made as `role` only
        if needs == "public":
            want = {200}
        elif role is None:
            want = {401}
        elif RANK[role] >= RANK[needs]:
            want = NO_PACS if path.startswith("/api/pacs/") else {200, 201}
        else:
            want = {403}
        assert r.status_code in want, f"{method} {path} as {role}: {r.status_code} {r.text[:200]}"
        if r.status_code in (401, 403):
            # a readable refusal, never a bare status: the sign-in page, or JSON that says why
            assert "Sign in" in r.text if "text/html" in r.headers["content-type"] else r.json()["detail"]


def test_anonymous_page_request_gets_the_sign_in_page(clinic):
    r = clinic.get("/")
    assert r.status_code == 401 and "Sign in" in r.text and "text/html" in r.headers["content-type"]
    assert clinic.get("/static/login.js").status_code == 200  # the sign-in page's own script is public
    assert clinic.get("/no/such/route").status_code == 401  # nothing is probed anonymously


def test_cookie_session_needs_csrf_and_ends_at_sign_out(clinic, synth_dir):
    r = clinic.post("/api/session", json={"name": "expert", "password": PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    csrf = r.json()["csrf_token"]
    assert clinic.get("/api/me").json()["name"] == "expert"
    files = {"image": ("q.png", _png(synth_dir), "image/png")}
    assert clinic.post("/api/query", files=files).status_code == 403  # a write without the token
    assert clinic.post("/api/query", files=files, headers={"X-CSRF-Token": "forged"}).status_code == 403
    q = clinic.post("/api/query", files=files, headers={"X-CSRF-Token": csrf})
    assert q.status_code == 200
    assert clinic.post("/api/session/end", headers={"X-CSRF-Token": csrf}).status_code == 200
    clinic.cookies.set(COOKIE, cookie.split(";")[0].split("=", 1)[1])  # a copy kept by an attacker
    assert clinic.get("/api/info").status_code == 401


def test_wrong_password_and_throttling(clinic):
    for _ in range(4):
        r = clinic.post("/api/session", json={"name": "viewer", "password": "wrong password"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    r = clinic.post("/api/session", json={"name": "nobody", "password": "x"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"  # names are not revealed
    r = clinic.post("/api/session", json={"name": "viewer", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right password waits


def test_throttle_doubles_and_forgets():
    t = SignInThrottle(free=2, window_s=100, cap_s=30)
    for i in range(4):
        t.failed("a", now=1000 + i)
    assert t.wait("a", now=1003) == pytest.approx(8.0)  # 3 over the free 2: 2**3 s after the last
    assert t.wait("b", now=1003) == 0
    assert t.wait("a", now=1200) == 0  # failures older than the window are forgotten


def test_expired_and_removed_users_are_signed_out(clinic, users_file, tmp_path):
    with sqlite3.connect(clinic.db) as con:
        con.execute("UPDATE sessions SET expires = 0 WHERE user = 'viewer'")
    clinic.app.state.access.sessions._cache.clear()
    assert clinic.get("/api/info", headers=_as(clinic, "viewer")).status_code == 401
    copy = tmp_path / "users.json"
    shutil.copy(users_file, copy)
    clinic.app.state.access.users = Users(copy)
    Users(copy).remove("expert")
    assert clinic.get("/api/info", headers=_as(clinic, "expert")).status_code == 401
    assert clinic.get("/api/info", headers=_as(clinic, "admin")).status_code == 200


def test_audit_records_who_saw_what(clinic, synth_dir):
    clinic.post("/api/session", json={"name": "viewer", "password": "wrong password"})
    q = _query(clinic, synth_dir, "expert")
    n = q["neighbors"][0]
    clinic.get(n["image_url"], headers=_as(clinic, "expert"))
    clinic.get(n["qam_url"], headers=_as(clinic, "expert"))
    clinic.post(
        "/api/feedback",
        json={"query_id": q["query_id"], "image_id": n["image_id"], "relevant": False},
        headers=_as(clinic, "expert"),
    )
    clinic.post("/api/feedback", json={}, headers=_as(clinic, "viewer"))
    entries = clinic.get("/api/audit", headers=_as(clinic, "admin")).json()
    seen = {(e["user"], e["action"], e["target"]) for e in entries}
    assert ("viewer", "sign_in_failed", None) in seen
    assert ("expert", "query", q["query_id"]) in seen  # the content hash, not the image
    assert ("expert", "view_image", n["image_id"]) in seen
    assert ("expert", "view_map", f"{q['query_id']}/{n['image_id']}") in seen
    assert ("expert", "feedback", f"{q['query_id']}/{n['image_id']}") in seen
    assert ("viewer", "forbidden", "/api/feedback") in seen
    assert all(e["address"] for e in entries if e["action"] != "purge")
    con = sqlite3.connect(clinic.db)
    for sql in ("UPDATE audit SET user = 'someone else'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    assert sum(1 for _ in con.execute("SELECT * FROM audit")) >= len(entries)


def test_feedback_records_its_author_and_only_experts_train(clinic, synth_dir):
    q = _query(clinic, synth_dir, "expert")
    ids = [n["image_id"] for n in q["neighbors"][:2]]
    for iid, rel in zip(ids, (True, False), strict=True):
        body = {"query_id": q["query_id"], "image_id": iid, "relevant": rel}
        assert clinic.post("/api/feedback", json=body, headers=_as(clinic, "expert")).status_code == 200
    store = FeedbackStore(clinic.db)
    # a click by a viewer (recorded by an older or other tool) never trains the model
    store.add_feedback(q["query_id"], ids[0], False, user="viewer", role="viewer")
    store.add_feedback(q["query_id"], ids[1], True, user="viewer", role="viewer")
    fb = read_feedback_triplets(clinic.db)
    assert fb.triplets == [(0, ids[0], ids[1])] and fb.other_roles == 2
    rows = sqlite3.connect(clinic.db).execute("SELECT user, role FROM feedback ORDER BY id").fetchall()
    assert rows[:2] == [("expert", "expert"), ("expert", "expert")]


def test_admin_adds_and_removes_a_case(clinic, synth_dir):
    admin = _as(clinic, "admin")
    before = clinic.get("/api/info", headers=admin).json()["archive_size"]
    r = clinic.post(
        "/api/archive",
        files={"image": ("x.png", _png(synth_dir, "SYN_test_00005.png"), "image/png")},
        data={"image_id": "CLINIC_0001", "diagnosis": "MEL"},
        headers=admin,
    )
    assert r.status_code == 201 and r.json()["diagnosis"] == "melanoma"
    assert clinic.get("/api/info", headers=admin).json()["archive_size"] == before + 1
    assert clinic.get("/api/images/CLINIC_0001", headers=admin).status_code == 200
    again = clinic.post(
        "/api/archive",
        files={"image": ("x.png", _png(synth_dir, "SYN_test_00005.png"), "image/png")},
        data={"image_id": "CLINIC_0001", "diagnosis": "nevus"},
        headers=admin,
    )
    assert again.status_code == 409
    bad = clinic.post(
        "/api/archive",
        files={"image": ("x.png", b"not an image", "image/png")},
        data={"image_id": "../evil", "diagnosis": "nevus"},
        headers=admin,
    )
    assert bad.status_code == 422 and "image_id" in bad.json()["detail"]
    assert clinic.delete("/api/archive/CLINIC_0001", headers=admin).json()["archive_size"] == before
    assert clinic.delete("/api/archive/CLINIC_0001", headers=admin).status_code == 404
    # outcomes, refusals included, each with the status answered
    rows = [e for e in clinic.get("/api/audit", headers=admin).json() if e["action"].startswith("archive_")]
    assert [(e["action"], e["status"]) for e in rows] == [
        ("archive_add", 201),
        ("archive_add", 409),
        ("archive_add", 422),
        ("archive_remove", 200),
        ("archive_remove", 404),
    ]
    assert rows[0]["target"] == "CLINIC_0001" and rows[0]["detail"] == "melanoma" and rows[0]["user"] == "admin"


def test_metrics_in_prometheus_format(clinic, synth_dir):
    _query(clinic, synth_dir)
    text = clinic.get("/metrics", headers=_as(clinic, "admin")).text
    assert 'chaiderm_requests_total{method="POST",route="/api/query",status="200"}' in text
    assert "chaiderm_inference_seconds_count" in text and "chaiderm_inference_queue" in text
    assert "chaiderm_request_seconds_bucket" in text
    assert "/api/maps/" not in text.replace("/api/maps/{query_id}", "")  # templates only, never ids


def test_server_that_keeps_no_query_images(served, synth_dir, tmp_path):
    app = create_app(served / "run", served / "ix", tmp_path / "fb.db", keep_queries_days=0)
    with TestClient(app) as c:
        q = c.post("/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")}).json()
        assert c.get(q["neighbors"][0]["qam_url"]).status_code == 200  # the result in memory still answers
        assert FeedbackStore(tmp_path / "fb.db").query_image(q["query_id"]) is None
        ok = c.post("/api/feedback", json={"query_id": q["query_id"], "image_id": "SYN_train_00001", "relevant": True})
        assert ok.status_code == 200  # feedback on an unstored query still works
        # audit failure 9: moving the k slider or refining answered 410 "upload it again"
        qid, first = q["query_id"], q["neighbors"][0]["image_id"]
        app.state.viewer.cache.clear()
        assert c.get(f"/api/query/{qid}", params={"k": 5}).status_code == 200
        refined = c.get(f"/api/query/{qid}", params={"similar": first})
        assert refined.status_code == 200 and c.get(refined.json()["neighbors"][0]["ram_url"]).status_code == 200
        assert FeedbackStore(tmp_path / "fb.db").query_image(qid) is None  # still never written
        app.state.viewer.held.clear()  # the hour the server holds it has passed
        app.state.viewer.cache.clear()
        gone = c.get(f"/api/query/{qid}")
        assert gone.status_code == 410 and "upload it again" in gone.json()["detail"]
        arch = c.post("/api/query", data={"archive_id": "SYN_train_00003"}).json()
        app.state.viewer.cache.clear()
        assert c.get(f"/api/query/{arch['query_id']}").status_code == 200  # archive cases reload from the archive


def test_a_purged_image_is_not_served_from_a_running_servers_memory(served, synth_dir, tmp_path):
    """Audit failure 4: after `chaiderm purge`, a running server still served the image and its maps from
    memory while /api/query/{id} said 410."""
    db = tmp_path / "fb.db"
    app = create_app(served / "run", served / "ix", db)
    with TestClient(app) as c:
        q = c.post("/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")}).json()
        image, qam = q["query_image_url"], q["neighbors"][0]["qam_url"]
        assert c.get(image).status_code == 200 and c.get(qam).status_code == 200
        r = _cli("purge", "--db", str(db), "--older-than", "0")  # another process, as an operator runs it
        assert r.returncode == 0, r.stderr
        for url in (image, qam, f"/api/query/{q['query_id']}"):
            assert c.get(url).status_code == 410, url
        assert not app.state.viewer.cache  # nothing of it is left in memory


def test_viewers_receive_no_patient_or_lesion_identifiers(served, synth_dir, tmp_path):
    """Audit (privacy): patient_id went to every viewer with each neighbour."""
    from chaiderm.data.records import load_table
    from chaiderm.models import load_model
    from chaiderm.pipeline import build_index

    ids = load_table(synth_dir, "train").image_ids[:40]
    root = tmp_path / "a"
    (root / "images").mkdir(parents=True)
    lines = ["image_id,diagnosis,patient_id,lesion_id,sex"]
    for n, i in enumerate(ids):
        shutil.copy(synth_dir / "train" / "images" / f"{i}.png", root / "images")
        lines.append(f"{i},{'melanoma' if n % 2 else 'nevus'},PAT-SECRET-{n},LES-{n},female")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    model, cfg = load_model(served / "run")
    ix, _ = build_index(model, cfg, load_table(root), model_dir=served / "run")
    ix.save(tmp_path / "ix")
    with TestClient(create_app(served / "run", tmp_path / "ix", tmp_path / "fb.db")) as c:
        r = c.post("/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")}, data={"k": "10"})
        assert r.status_code == 200 and "SECRET" not in r.text and "LES-" not in r.text
        assert r.json()["neighbors"][0]["metadata"] == {"sex": "female"}
        bad = c.post("/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")},
                     data={"where": "patient_id = PAT-SECRET-1"})  # fmt: skip
        assert bad.status_code == 422 and "SECRET-2" not in bad.text
    from typer.testing import CliRunner

    from chaiderm.cli import app as cli

    q = synth_dir / "test" / "images" / "SYN_test_00000.png"
    args = ["query", str(q), "--model", str(served / "run"), "--index", str(tmp_path / "ix")]
    args += ["--out", str(tmp_path / "r")]
    for reports in ("json", "html"):
        r = CliRunner().invoke(cli, [*args, "--reports", reports])
        assert r.exit_code == 0, r.output
        written = "".join(p.read_text() for p in (tmp_path / "r").glob("*.*") if p.suffix in (".json", ".html"))
        assert "SYN_train" in written and "SECRET" not in written and "LES-" not in written


def test_purge_erases_old_images_and_keeps_feedback(tmp_path, synth_dir):
    db = tmp_path / "fb.db"
    store = FeedbackStore(db)
    old = store.add_query(_png(synth_dir, "SYN_test_00001.png"))
    with sqlite3.connect(db) as con:
        con.execute("UPDATE queries SET created = created - 40 * 86400 WHERE query_id = ?", (old,))
    new = store.add_query(_png(synth_dir, "SYN_test_00002.png"))
    store.add_feedback(old, "SYN_train_00001", True)
    store.add_feedback(old, "SYN_train_00002", False)
    r = subprocess.run(
        [sys.executable, "-m", "chaiderm.cli", "purge", "--db", str(db), "--older-than", "30"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "erased 1 query image" in r.stderr
    assert store.query_image(old) is None and store.query_image(new) is not None
    assert store.count_feedback() == 2
    fb = read_feedback_triplets(db)
    assert fb.triplets == [] and fb.purged_queries == 1  # counted, not silently dropped
    raw = db.read_bytes() + (
        db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists() else b""
    )
    assert _png(synth_dir, "SYN_test_00001.png")[100:164] not in raw  # overwritten, not only unlinked
    assert [e.action for e in AuditLog(store).entries()] == ["purge"]


def _cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "chaiderm.cli", *args], capture_output=True, text=True, input=stdin, timeout=120
    )


def test_cli_users_audit_and_refusals(served, tmp_path):
    users = tmp_path / "u.json"
    r = _cli("users", "add", "dr.ada", "--role", "expert", "--users", str(users), "--password-stdin", stdin="short\n")
    assert r.returncode == 2 and "at least 10 characters" in r.stderr and "Traceback" not in r.stderr
    r = _cli("users", "add", "dr.ada", "--role", "surgeon", "--users", str(users), "--password-stdin", stdin=PASSWORD)
    assert r.returncode == 2 and "viewer, expert, admin" in r.stderr
    r = _cli("users", "add", "dr.ada", "--role", "expert", "--users", str(users), "--password-stdin", stdin=PASSWORD)
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in users.read_text() and "$argon2id$" in users.read_text()
    assert oct(users.stat().st_mode)[-3:] == "600"
    assert _cli("users", "list", "--users", str(users)).stdout.strip() == "dr.ada\texpert"
    r = _cli("users", "add", "dr.ada", "--role", "admin", "--users", str(users), "--password-stdin", stdin=PASSWORD)
    assert r.returncode == 2 and "--replace" in r.stderr
    # off loopback without sign-in: refused before anything loads, saying what to do
    r = _cli("serve", "--model", str(served / "run"), "--index", str(served / "ix"), "--host", "0.0.0.0")
    assert r.returncode == 2 and "chaiderm users add" in r.stderr and "--users" in r.stderr
    r = _cli("serve", "--model", str(served / "run"), "--index", str(served / "ix"), "--ssl-certfile", "x.pem")
    assert r.returncode == 2 and "go together" in r.stderr
    db = tmp_path / "fb.db"
    log = AuditLog(FeedbackStore(db))
    log.record("sign_in", user="dr.ada", role="expert", address="10.0.0.7", status=200)
    log.record("view_image", user="=cmd|' /C calc'!A0", role="viewer", address="10.0.0.8", target="ISIC_1")
    r = _cli("audit", "--db", str(db), "--csv", "-", "--since", "2000-01-01")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [x["action"] for x in rows] == ["sign_in", "view_image"] and rows[1]["user"].startswith("'=")
    assert _cli("audit", "--db", str(db), "--csv", "-", "--user", "dr.ada").stdout.count("\n") == 2
    r = _cli("audit", "--db", str(db), "--since", "last tuesday")
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr
    assert _cli("audit", "--db", str(tmp_path / "none.db")).returncode == 2


def test_inferences_run_in_parallel(served, tmp_path, monkeypatch):
    """Two queries at once are computed at once (no global lock), up to the worker count."""
    app = create_app(served / "run", served / "ix", tmp_path / "fb.db", workers=2)
    state = app.state.viewer
    inside, most = [0], [0]
    gate = threading.Lock()

    def slow(*args, **kwargs):
        with gate:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.3)
        with gate:
            inside[0] -= 1

    def run():
        with state.inference():
            slow()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2 and state.waiting == 0 and state.running == 0


def test_kill_9_under_load_loses_no_acknowledged_click(served, synth_dir, users_file, tmp_path):
    """8 clients click as fast as they can on the real server (sign-in, parallel inference, audit); the
    server is killed with SIGKILL mid-stream: every click it acknowledged is in the database."""
    import os
    import signal
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "fb.db"
    srv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chaiderm.cli",
            "serve",
            "--model",
            str(served / "run"),
            "--index",
            str(served / "ix"),
            "--db",
            str(db),
            "--port",
            str(port),
            "--users",
            str(users_file),
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        token = httpx.post(base + "/api/token", json={"name": "expert", "password": PASSWORD}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        q = httpx.post(base + "/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")}, headers=auth)
        qid = q.json()["query_id"]
        acked: list[int] = []
        lock = threading.Lock()

        def clicker(w: int) -> None:
            with httpx.Client(base_url=base, headers=auth, timeout=5) as c:
                for i in range(10_000):
                    try:
                        r = c.post(
                            "/api/feedback",
                            json={
                                "query_id": qid,
                                "image_id": f"SYN_train_{(w * 7 + i) % 80:05d}",
                                "relevant": i % 2 == 0,
                            },
                        )
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            acked.append(r.json()["feedback_id"])

        threads = [threading.Thread(target=clicker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.kill(srv.pid, signal.SIGKILL)
        for t in threads:
            t.join(timeout=30)
    finally:
        srv.kill()
        srv.wait()
    assert len(acked) > 20, "the load did not get going"
    stored = {r[0] for r in sqlite3.connect(db).execute("SELECT id FROM feedback")}
    assert set(acked) <= stored
