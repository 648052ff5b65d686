"""Refining a search: by region of the query (pooled over the map cells under boxes) and by example
(Rocchio on cases marked similar / not similar), through the Predictor, the API and the CLI."""

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from chaiderm.cli import app as cli
from chaiderm.data.images import load_image
from chaiderm.errors import DataError
from chaiderm.index.refine import Region, from_original, parse_regions, region_cells, rocchio
from chaiderm.pipeline import Predictor
from chaiderm.web.app import create_app


def test_region_cells_and_parsing():
    # 72 px square, centre 64 crop, 4x4 map: cells of 16 px starting at 4
    cells = region_cells([Region(4, 4, 36, 20)], 72, 64, (4, 4))
    assert cells.tolist()[0] == [True, True, False, False] and cells.sum() == 2
    with pytest.raises(DataError, match="covers no map cell"):
        region_cells([Region(0, 0, 5, 5)], 72, 64, (4, 4))
    assert parse_regions("1,2,30,40; 5,5,9,9", 72) == [Region(1, 2, 30, 40), Region(5, 5, 9, 9)]
    for bad, why in (("1,2,3", "four numbers"), ("5,5,1,9", "x0 < x1"), ("0,0,80,10", "outside"), ("a,b,c,d", "four")):
        with pytest.raises(DataError, match=why):
            parse_regions(bad, 72)
    # an original 200x100 (w x h) image: shorter side to 72, centre-cropped horizontally by 36 px
    assert from_original([Region(50, 0, 150, 100)], (100, 200), 72) == [Region(0, 0, 72, 72)]


def test_rocchio_moves_toward_similar_and_away_from_the_rest():
    q = np.zeros(2, np.float32)
    moved = rocchio(q, np.array([[2.0, 0.0]]), np.array([[0.0, 2.0]]), beta=0.25, gamma=0.25)
    assert moved.tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="keeps its own weight"):
        rocchio(q, np.array([[2.0, 0.0]]), np.zeros((0, 2)), beta=1.0)


def test_one_similar_mark_never_puts_the_query_on_the_marked_case():
    """The query keeps its own weight: one mark (with any allowed weights, with or without a push away
    from other marks) leaves the refined query at least half as far from the marked case as it was."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        q, s = rng.normal(size=(2, 8)).astype(np.float32)
        dis = rng.normal(size=(int(rng.integers(0, 3)), 8)).astype(np.float32)
        beta, gamma = rng.uniform(0, 0.5), rng.uniform(0, 2)
        for moved in (rocchio(q, s[None], dis, beta, gamma), rocchio(q, s[None], dis[:0])):
            assert np.linalg.norm(moved - s) >= 0.5 * np.linalg.norm(q - s) - 1e-5


def test_predict_by_region_restricts_the_maps(served, synth_dir):
    p = Predictor.load(served / "run", served / "ix")
    img = load_image(synth_dir / "test" / "images" / "SYN_test_00004.png")
    whole = p.predict(img, k=5)
    part = p.predict(img, k=5, regions=[Region(4, 4, 40, 40)])
    cells = region_cells([Region(4, 4, 40, 40)], 72, 64, part.maps.shape[1:])
    assert not cells.all() and np.all(part.qams[:, ~cells] == 0) and part.qams[:, cells].sum() > 0
    assert np.allclose(part.embedding, whole.maps[:, cells].mean(axis=1), atol=1e-6)
    assert not np.allclose(part.embedding, whole.embedding)


@pytest.fixture
def client(served, tmp_path):
    with TestClient(create_app(served / "run", served / "ix", tmp_path / "fb.db")) as c:
        yield c


def _png(synth_dir):
    return (synth_dir / "test" / "images" / "SYN_test_00004.png").read_bytes()


def test_api_region_and_refine(client, synth_dir):
    files = {"image": ("q.png", _png(synth_dir), "image/png")}
    q = client.post("/api/query", files=files, data={"region": "4,4,40,40"})
    assert q.status_code == 200 and q.json()["region"] == "4,4,40,40"
    qam = q.json()["neighbors"][0]["qam_url"]
    assert "region=4%2C4%2C40%2C40" in qam and client.get(qam).status_code == 200
    cases = (
        ("0,0,3,3", "covers no map cell"),
        ("0,0,500,10", "outside"),
        ("1,2", "four numbers"),
        ("inf,0,64,64", "four numbers"),  # was a plain-text 500 (OverflowError)
        ("nan,0,64,64", "four numbers"),
        (";;;", "four numbers"),  # was taken as "no region"
    )
    for region, why in cases:
        r = client.post("/api/query", files=files, data={"region": region})
        assert r.status_code == 422 and why in r.json()["detail"], r.text
    plain = client.post("/api/query", files=files, data={"k": "10"}).json()
    qid = plain["query_id"]
    first = [n["image_id"] for n in plain["neighbors"]]
    far = client.get(f"/api/query/{qid}", params={"k": 40}).json()["neighbors"][-1]["image_id"]
    refined = client.get(f"/api/query/{qid}", params={"similar": far, "not_similar": first[0]}).json()
    after = [n["image_id"] for n in refined["neighbors"]]
    assert after != first and refined["similar"] == [far] and refined["not_similar"] == [first[0]]
    wide = client.get(f"/api/query/{qid}", params={"k": 40, "similar": far}).json()["neighbors"]
    assert [n["image_id"] for n in wide].index(far) < 39  # the case marked similar moves up from 40th
    assert all(client.get(n["ram_url"]).status_code == 200 for n in refined["neighbors"][:2])
    # one "similar" mark steers the query; it does not become the marked case at distance 0
    mark = plain["neighbors"][3]
    once = client.get(f"/api/query/{qid}", params={"similar": mark["image_id"]}).json()["neighbors"]
    at = {n["image_id"]: n["distance"] for n in once}
    assert at[mark["image_id"]] >= 0.2 * mark["distance"] > 0, (mark, once[:3])
    bad = client.get(f"/api/query/{qid}", params={"similar": "NOPE"})
    assert bad.status_code == 422 and "NOPE" in bad.json()["detail"]
    both = client.get(f"/api/query/{qid}", params={"similar": far, "not_similar": far})
    assert both.status_code == 422


def test_cli_region(served, synth_dir, tmp_path):
    img = synth_dir / "test" / "images" / "SYN_test_00004.png"
    base = ["query", str(img), "--model", str(served / "run"), "--index", str(served / "ix"), "--out", str(tmp_path)]
    r = CliRunner().invoke(cli, [*base, "--region", "0,0,40,40"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads((tmp_path / "SYN_test_00004.json").read_text())["region"] == "0,0,40,40"  # 72 px image
    r = CliRunner().invoke(cli, [*base, "--region", "0,0,900,40"])
    assert r.exit_code == 2 and "outside" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, [*base, "--region", "inf,0,40,40"])
    assert r.exit_code == 2 and "four numbers" in r.output, r.output  # was a traceback
