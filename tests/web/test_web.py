import io
import sqlite3
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from chaiderm.data.images import MAX_PIXELS
from chaiderm.data.records import load_table
from chaiderm.models import build_model, save_model
from chaiderm.pipeline import build_index
from chaiderm.web.app import create_app
from tests.conftest import tiny_cfg


@pytest.fixture
def client(served, tmp_path):
    app = create_app(served / "run", served / "ix", tmp_path / "fb.db", max_upload=200_000)
    with TestClient(app) as c:
        c.db = tmp_path / "fb.db"
        yield c


def _png(synth_dir, name="SYN_test_00000.png") -> bytes:
    return (synth_dir / "test" / "images" / name).read_bytes()


def test_query_maps_feedback_flow(client, synth_dir):
    assert client.get("/healthz").json() == {"status": "ok", "archive": 80}
    r = client.post("/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")}, data={"k": "7"})
    assert r.status_code == 200, r.text
    q = r.json()
    assert q["k"] == 7 and len(q["neighbors"]) == 7 and 0 <= q["melanoma_probability"] <= 1
    n = q["neighbors"][0]
    assert {"image_id", "diagnosis", "group", "distance", "qam_url", "ram_url"} <= set(n)
    for url in (n["qam_url"], n["ram_url"], q["query_image_url"], n["image_url"]):
        resp = client.get(url)
        assert resp.status_code == 200 and resp.content[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")
    # another k without re-uploading
    r5 = client.get(f"/api/query/{q['query_id']}?k=5").json()
    assert r5["query_id"] == q["query_id"] and len(r5["neighbors"]) == 5
    assert [x["image_id"] for x in r5["neighbors"]] == [x["image_id"] for x in q["neighbors"][:5]]
    r = client.post("/api/feedback", json={"query_id": q["query_id"], "image_id": n["image_id"], "relevant": True})
    assert r.status_code == 200 and r.json()["ok"]
    rows = sqlite3.connect(client.db).execute("SELECT query_id, image_id, relevant FROM feedback").fetchall()
    assert rows == [(q["query_id"], n["image_id"], 1)]
    assert (
        client.post(
            "/api/feedback", json={"query_id": "nope", "image_id": n["image_id"], "relevant": False}
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/feedback", json={"query_id": q["query_id"], "image_id": "nope", "relevant": False}
        ).status_code
        == 404
    )


def test_archive_query_excludes_itself(client):
    r = client.post("/api/query", data={"archive_id": "SYN_train_00003", "k": "5"})
    assert r.status_code == 200
    assert "SYN_train_00003" not in [n["image_id"] for n in r.json()["neighbors"]]


def test_bad_uploads(client, synth_dir):
    r = client.post("/api/query", files={"image": ("x.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    data = _png(synth_dir)
    r = client.post("/api/query", files={"image": ("t.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 400 and "truncated" in r.json()["detail"]
    r = client.post("/api/query", files={"image": ("big.bin", b"\0" * 300_000, "image/png")})
    assert r.status_code == 413  # refused by its declared length
    r = client.post("/api/query", files={"image": ("big.bin", b"\0" * 230_000, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]  # within the slack: refused after reading
    side = int(np.sqrt(MAX_PIXELS)) + 10
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")  # small file, huge image
    r = client.post("/api/query", files={"image": ("huge.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    assert client.post("/api/query", files={"image": ("q.png", data, "image/png")}, data={"k": "99"}).status_code == 422


@pytest.mark.parametrize("bad", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "SYN_train_99999", "%00"])
def test_archive_images_by_id_only(client, bad):
    assert client.get(f"/api/images/{bad}").status_code == 404


def test_archive_image_served(client):
    r = client.get("/api/images/SYN_train_00001")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_query_page_served_with_a_content_security_policy(client):
    r = client.get("/")
    assert "evidence viewer" in r.text and '<script src="/static/viewer.js"' in r.text
    assert "<script>" not in r.text  # no inline script: the CSP allows none
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    js = client.get("/static/viewer.js")
    assert js.status_code == 200 and "textContent" in js.text and "innerHTML" not in js.text
    assert client.get("/api/info").headers["x-content-type-options"] == "nosniff"


def test_vote_is_the_whole_diagnosis_distribution(client, synth_dir):
    r = client.post("/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")}, data={"k": "10"})
    q = r.json()
    probs = q["class_probabilities"]
    assert set(probs) == set(client.get("/api/info").json()["diagnoses"])
    assert abs(sum(probs.values()) - 1) < 1e-9 and list(probs.values()) == sorted(probs.values(), reverse=True)
    assert q["positive_class"] == "melanoma" and q["melanoma_probability"] == probs["melanoma"]
    counts = {d: sum(n["diagnosis"] == d for n in q["neighbors"]) for d in probs}
    assert all(abs(probs[d] - counts[d] / 10) < 1e-9 for d in probs)
    top = max(counts, key=counts.get)
    assert q["summary"].startswith(f"{counts[top]} of 10 nearest cases: {top.replace('_', ' ')}")


def test_an_archive_case_never_finds_itself(client):
    """Not on the first query, not after a k change, not after its cached result was evicted."""
    r = client.post("/api/query", data={"archive_id": "SYN_train_00003", "k": "5"})
    qid = r.json()["query_id"]
    assert r.json()["archive_id"] == "SYN_train_00003"
    ids = lambda body: [n["image_id"] for n in body["neighbors"]]  # noqa: E731
    assert "SYN_train_00003" not in ids(r.json())
    for k in (3, 10, 40):
        again = client.get(f"/api/query/{qid}", params={"k": k}).json()
        assert "SYN_train_00003" not in ids(again) and len(again["neighbors"]) == k
        assert again["neighbors"][0]["distance"] > 0
    client.app.state.viewer.cache.clear()  # evicted: maps recompute the query from the database
    assert client.get(f"/api/maps/{qid}/SYN_train_00010/qam.png").status_code == 200
    assert "SYN_train_00003" not in ids(client.get(f"/api/query/{qid}", params={"k": 10}).json())


def test_thin_and_non_listed_uploads_refused(client):
    buf = io.BytesIO()
    Image.new("L", (1, 20_000)).save(buf, "PNG")  # 138 bytes that would upsample to 1.2 GB
    r = client.post("/api/query", files={"image": ("thin.png", buf.getvalue(), "image/png")})
    assert r.status_code == 422 and "thin.png" in r.json()["detail"] and "1x20000" in r.json()["detail"]
    buf = io.BytesIO()
    Image.new("RGB", (7, 7)).save(buf, "PNG")  # too small, not too large: was 413 "Payload Too Large"
    r = client.post("/api/query", files={"image": ("tiny.png", buf.getvalue(), "image/png")})
    assert r.status_code == 422 and "7x7" in r.json()["detail"] and "under 8 pixels" in r.json()["detail"]
    for fmt in ("EPS", "TIFF", "BMP"):
        buf = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buf, fmt)
        r = client.post("/api/query", files={"image": (f"x.{fmt.lower()}", buf.getvalue(), "image/png")})
        assert r.status_code == 415 and "JPEG, PNG" in r.json()["detail"]


def test_streamed_body_without_length_refused_once_over_the_limit(client):
    sent = []

    def chunks():
        for _ in range(200):  # 200 x 64 KB = 12.8 MB offered against a 0.2 MB limit
            sent.append(1)
            yield b"\0" * 65_536

    r = client.post("/api/query", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_a_locked_database_answers_503_within_a_second(client, synth_dir):
    qid = client.post("/api/query", files={"image": ("q.png", _png(synth_dir), "image/png")}).json()["query_id"]
    lock = sqlite3.connect(client.db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        t = time.perf_counter()
        r = client.post("/api/feedback", json={"query_id": qid, "image_id": "SYN_train_00001", "relevant": True})
        assert r.status_code == 503 and "not saved" in r.json()["detail"].replace("nothing was saved", "not saved")
        assert time.perf_counter() - t < 1.5
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    r = client.post("/api/feedback", json={"query_id": qid, "image_id": "SYN_train_00001", "relevant": True})
    assert r.status_code == 200


def test_index_works_from_another_folder_and_after_moving(served, synth_dir, tmp_path, monkeypatch):
    import shutil

    from chaiderm.data.records import load_table
    from chaiderm.models import load_model
    from chaiderm.pipeline import build_index

    data = tmp_path / "site" / "archive"
    shutil.copytree(synth_dir / "train", data)
    monkeypatch.chdir(tmp_path / "site")
    model, cfg = load_model(served / "run")
    index, _ = build_index(model, cfg, load_table("archive").subset(range(20)), model_dir=served / "run")
    index.save("ix")  # built from relative paths, in this working folder
    shutil.move(str(tmp_path / "site"), str(tmp_path / "moved"))  # index and archive move together
    monkeypatch.chdir(tmp_path)
    app = create_app(served / "run", tmp_path / "moved" / "ix", tmp_path / "fb.db")
    with TestClient(app) as c:
        assert c.get("/api/images/SYN_train_00001").status_code == 200
        (tmp_path / "moved" / "archive" / "images" / "SYN_train_00002.png").unlink()
        r = c.get("/api/images/SYN_train_00002")
        assert r.status_code == 404 and "missing" in r.json()["detail"]


def test_queries_are_embedded_with_the_views_the_index_was_built_with(synth_dir, tmp_path):
    """An index records its test-time views; queries follow it, and old indexes (no record) mean single views."""
    import json

    import torch

    from chaiderm.data.images import load_image
    from chaiderm.errors import DataError
    from chaiderm.models.inference import embed
    from chaiderm.pipeline import Predictor

    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.model.views = "flip"
    model = build_model(cfg.model).eval()
    save_model(model, tmp_path / "run", cfg)
    table = load_table(synth_dir, "train").subset(range(30))
    index, _ = build_index(model, cfg, table, model_dir=tmp_path / "run")
    index.save(tmp_path / "ix")
    assert index.info["views"] == "flip"
    p = Predictor.load(tmp_path / "run", tmp_path / "ix")
    r = p.predict(load_image(table.paths[3]), k=3)
    # an archive image finds itself at distance 0 only if it is embedded the way the archive was
    assert r.prediction.neighbors[0].image_id == table.image_ids[3]
    assert r.prediction.neighbors[0].distance == pytest.approx(0, abs=1e-4)
    np.testing.assert_allclose(r.maps.mean((1, 2)), r.embedding, rtol=1e-4, atol=1e-5)
    # the same index read as an old one (no "views" recorded): queries use single views, and then differ
    info = tmp_path / "ix" / "info.json"
    old = json.loads(info.read_text())
    old.pop("views")
    info.write_text(json.dumps(old))
    p_old = Predictor.load(tmp_path / "run", tmp_path / "ix")
    assert p_old.views == "none"
    noise = np.random.default_rng(0).integers(0, 256, (90, 90, 3), dtype=np.uint8)  # not mirror-symmetric
    plain = embed(model, p.square(noise)[None], cfg.model.image_size)[0][0]
    flipped = embed(model, p.square(noise)[None], cfg.model.image_size, views="flip")[0][0]
    assert np.abs(plain - flipped).max() > 1e-3
    np.testing.assert_allclose(p_old.predict(noise, k=1).embedding, plain, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.predict(noise, k=1).embedding, flipped, rtol=1e-4, atol=1e-5)
    cfg.model.views = "rot90"
    with pytest.raises(DataError, match="views: 'rot90'"):
        build_index(model, cfg, table, model_dir=tmp_path / "run")


def test_stored_queries_keep_no_exif(client, synth_dir):
    img = Image.open(io.BytesIO(_png(synth_dir))).convert("RGB")
    exif = img.getexif()
    exif[0x013B] = "Dr. Example, Clinic X"  # Artist
    exif[0x0112] = 6  # orientation: turned
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    sent = buf.getvalue()
    r = client.post("/api/query", files={"image": ("q.jpg", sent, "image/jpeg")})
    assert r.status_code == 200
    from chaiderm.data.feedback import content_id

    qid = r.json()["query_id"]
    assert qid == content_id(sent)  # the same upload is the same query
    blob = sqlite3.connect(client.db).execute("SELECT image FROM queries WHERE query_id = ?", (qid,)).fetchone()[0]
    assert b"Dr. Example" not in blob and b"Exif" not in blob
    stored = Image.open(io.BytesIO(blob))
    assert not stored.getexif() and not stored.info.get("exif")
    assert client.get(f"/api/query/{qid}", params={"k": 5}).status_code == 200  # still answers from it


def test_the_schema_declares_what_the_server_enforces(client):
    """Audit failure 15: schemathesis as an outside client found schema-valid requests refused (k = 41, a
    map style or audit action the schema did not enumerate) and an Allow header naming one route's methods."""
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/query"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = post["$ref"].rsplit("/", 1)[-1]
    k = spec["components"]["schemas"][ref]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 40)
    params = {p["name"]: p["schema"] for p in spec["paths"]["/api/query/{query_id}"]["get"]["parameters"]}
    assert (params["k"]["minimum"], params["k"]["maximum"]) == (1, 40)
    route = spec["paths"]["/api/maps/{query_id}/{image_id}/{kind}.png"]["get"]
    maps = {p["name"]: p["schema"] for p in route["parameters"]}
    assert maps["kind"]["enum"] == ["qam", "ram"] and maps["style"]["enum"] == ["contour", "heat"]
    add = spec["paths"]["/api/archive"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    case = spec["components"]["schemas"][add["$ref"].rsplit("/", 1)[-1]]["properties"]["image_id"]
    assert case["pattern"].startswith("^")
    r = client.post("/api/query", files={"image": ("q.png", b"x", "image/png")}, data={"k": "41"})
    assert r.status_code == 422 and r.json()["detail"].startswith("k:")
    r = client.options("/api/archive")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) >= {"GET", "POST"}
    assert client.request("PATCH", "/api/archive/x").headers["allow"] == "DELETE"


def test_project_errors_map_to_one_status_and_line():
    """web.errors: each error type/code has one status; messages naming server paths are said in words."""
    from chaiderm.errors import ArtifactError, DataError
    from chaiderm.index.lock import IndexBusyError
    from chaiderm.web.errors import answer

    assert answer(DataError("up.png", "not an image", code="not_image")).status == 415
    assert answer(DataError(None, "box outside", code="bad_region")).status == 422
    assert answer(DataError(None, "exists", code="conflict")).status == 409
    db = answer(DataError("/srv/secret/fb.db", "database is locked", code="unavailable"))
    assert db.status == 503 and "/srv/secret" not in db.detail and "try again" in db.detail
    busy = answer(IndexBusyError("/srv/secret/ix: held"))
    assert busy.status == 503 and busy.headers["Retry-After"] == "5" and "/srv/secret" not in busy.detail
    assert answer(ArtifactError("the archive is incomplete")).status == 500
