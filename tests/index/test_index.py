import numpy as np
import pytest

from chaiderm._io import atomic_dir
from chaiderm.errors import ArtifactError
from chaiderm.index import ArchiveIndex, KNNMelanomaClassifier, build_faiss, knn_vote, relevance_at_k


def _clustered(n, d, rng, centres=20):
    c = rng.normal(size=(centres, d)).astype(np.float32)
    return c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)


def test_flat_search_is_exact_squared_l2(rng):
    x = rng.normal(size=(200, 16)).astype(np.float32)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    d, i = build_faiss(x, "flat").search(q, 7)
    brute = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(i, np.argsort(brute, axis=1)[:, :7])
    np.testing.assert_allclose(d, np.sort(brute, axis=1)[:, :7], rtol=1e-4)


@pytest.mark.parametrize(
    "kind,params",
    [
        ("ivf", {"nlist": 16, "nprobe": 8, "pca_dim": 24, "k_factor": 16}),
        ("ivf", {"nlist": 16, "nprobe": 8}),
        ("hnsw", {}),
    ],
)
def test_approximate_indexes_recall(rng, kind, params):
    x = _clustered(3000, 32, rng)
    q = _clustered(50, 32, rng)
    _, exact = build_faiss(x, "flat").search(q, 10)
    _, approx = build_faiss(x, kind, **params).search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.9
    if kind == "ivf":  # candidates are re-ranked on full vectors: returned distances are exact
        d_approx, i_approx = build_faiss(x, kind, **params).search(q[:1], 3)
        np.testing.assert_allclose(d_approx[0], ((x[i_approx[0]] - q[0]) ** 2).sum(1), rtol=1e-4)


def test_knn_vote_and_relevance():
    pos = np.array([[1, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    np.testing.assert_allclose(knn_vote(pos, 3), [2 / 3, 0])
    np.testing.assert_allclose(knn_vote(pos, 4), [0.75, 0.25])
    with pytest.raises(ValueError):
        knn_vote(pos, 5)
    qg = np.array([1, -1])
    ng = np.array([[1, 1, 2], [-1, -1, -1]])
    assert relevance_at_k(qg, ng, 3).tolist() == [2, 0]


def test_sklearn_style_classifier(rng):
    x = np.concatenate([rng.normal(0, 1, (50, 4)), rng.normal(4, 1, (50, 4))]).astype(np.float32)
    y = np.array(["nevus"] * 50 + ["melanoma"] * 50)
    clf = KNNMelanomaClassifier(5).fit(x, y)
    assert clf.n_samples_fit_ == 100
    proba = clf.predict_proba(x[:3])
    assert proba.shape == (3, 2) and np.allclose(proba.sum(1), 1)
    assert clf.score(x, y) > 0.95


def test_archive_roundtrip_and_corruption(tmp_path, rng):
    emb = rng.normal(size=(10, 8)).astype(np.float32)
    maps = rng.random((10, 8, 2, 2)).astype(np.float16)
    idx = ArchiveIndex.build(
        emb,
        image_ids=[f"i{j}" for j in range(10)],
        diagnoses=["melanoma", "nevus"] * 5,
        groups=[None] * 10,
        paths=[f"/p/{j}.png" for j in range(10)],
        maps=maps,
        info={"model_digest": "x"},
    )
    idx.save(tmp_path / "ix")
    back = ArchiveIndex.load(tmp_path / "ix")
    d1, i1 = idx.search(emb[:2], 3)
    d2, i2 = back.search(emb[:2], 3)
    np.testing.assert_array_equal(i1, i2)
    assert back.image_ids == idx.image_ids and back.maps.shape == maps.shape
    assert back.row_of("i3") == 3 and back.info["model_digest"] == "x"
    (tmp_path / "ix" / "cases.json").write_text("{}")
    with pytest.raises(ArtifactError, match="disagree"):
        ArchiveIndex.load(tmp_path / "ix")
    with pytest.raises(ArtifactError, match="not an index folder"):
        ArchiveIndex.load(tmp_path)


def test_atomic_dir_keeps_old_folder_when_interrupted(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert (target / "old.txt").read_text() == "old" and not (target / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
