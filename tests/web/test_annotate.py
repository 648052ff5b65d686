import pytest
from fastapi.testclient import TestClient

from chaiderm.data.records import attach_groups, check_nested, load_table, read_groups
from chaiderm.web.annotate import create_annotate_app


@pytest.fixture
def table(synth_dir):
    t = load_table(synth_dir, "val").subset(range(12))
    t.groups = [None] * len(t)
    return t


def test_annotate_hierarchical_saves_and_resumes(table, tmp_path):
    out = tmp_path / "groups.csv"
    mel = [i for i, d in zip(table.image_ids, table.diagnoses, strict=True) if d == "melanoma"]
    nev = [i for i, d in zip(table.image_ids, table.diagnoses, strict=True) if d == "nevus"]
    with TestClient(create_annotate_app(table, out, mode="hierarchical")) as c:
        assert "Similarity groups" in c.get("/").text
        assert c.post("/api/groups", json={"name": "dark", "disease": "melanoma"}).status_code == 200
        assert c.post("/api/groups", json={"name": "pale", "disease": "melanoma"}).status_code == 200
        assert c.post("/api/groups", json={"name": "dark", "disease": "melanoma"}).status_code == 409
        assert c.post("/api/assign", json={"image_id": mel[0], "group": "dark"}).status_code == 200
        assert c.post("/api/assign", json={"image_id": mel[1], "group": "pale"}).status_code == 200
        # a nevus cannot join a melanoma group
        assert c.post("/api/assign", json={"image_id": nev[0], "group": "dark"}).status_code == 409
        state = c.get("/api/state", params={"disease": "melanoma"}).json()
        assert {g["name"]: g["count"] for g in state["groups"]} == {"dark": 1, "pale": 1}
        assert all(im["diagnosis"] == "melanoma" for im in state["images"])
        assert c.post("/api/groups/rename", json={"old": "dark", "new": "very dark"}).status_code == 200
        assert c.post("/api/groups/merge", json={"source": "pale", "target": "very dark"}).status_code == 200
        assert c.get(f"/api/thumb/{mel[0]}").status_code == 200
    groups = read_groups(out)
    assert groups == {mel[0]: ("very dark", "melanoma"), mel[1]: ("very dark", "melanoma")}
    joined = attach_groups(table, out)
    check_nested(joined)  # usable for hierarchical training as written
    # resume: a new session sees the saved groups, including empty ones
    with TestClient(create_annotate_app(table, out, mode="hierarchical")) as c:
        assert c.post("/api/groups", json={"name": "empty", "disease": "nevus"}).status_code == 200
    with TestClient(create_annotate_app(table, out, mode="hierarchical")) as c:
        st = c.get("/api/state").json()
        assert st["assigned"] == 2 and {g["name"] for g in st["groups"]} == {"very dark", "empty"}
        assert c.post("/api/assign", json={"image_id": mel[0], "group": None}).status_code == 200
    assert set(read_groups(out)) == {mel[1]}


def test_annotate_joint_is_disease_blind(table, tmp_path):
    out = tmp_path / "blind.csv"
    with TestClient(create_annotate_app(table, out, mode="joint")) as c:
        c.post("/api/groups", json={"name": "round"})
        for iid in table.image_ids[:4]:
            assert c.post("/api/assign", json={"image_id": iid, "group": "round"}).status_code == 200
    assert out.read_text().splitlines()[0] == "image_id,group"
    assert len(read_groups(out)) == 4
