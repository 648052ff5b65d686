import threading
from pathlib import Path

import numpy as np
import pytest

from chaiderm.data.feedback import FeedbackStore, read_feedback_triplets
from chaiderm.data.records import load_table
from chaiderm.data.transforms import prepare
from chaiderm.index.faiss_index import exact_search
from chaiderm.models import load_model
from chaiderm.models.inference import embed
from chaiderm.training import train
from tests.conftest import tiny_cfg


def test_store_latest_click_wins_and_concurrent_writes(tmp_path):
    # every write must land, however the writers interleave; the server's 0.8 s busy limit is about answering
    # fast, and 8 writers on a loaded 2-core machine can queue past it, so this store waits longer
    store = FeedbackStore(tmp_path / "fb.db", timeout=10)
    q = store.add_query(b"image-bytes")
    assert store.add_query(b"image-bytes") == q  # content-addressed
    assert store.query_image(q) == b"image-bytes"
    with pytest.raises(KeyError):
        store.add_feedback("missing", "a", True)

    def click(worker: int) -> None:
        for i in range(25):
            store.add_feedback(q, f"img{worker}_{i}", i % 2 == 0)

    threads = [threading.Thread(target=click, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count_feedback() == 200
    store.add_feedback(q, "img0_0", False)
    assert store.judgements()[q]["img0_0"] is False


def _ranks(run, table, queries):
    model, cfg = load_model(run)
    a, _, _ = prepare(table.paths, cfg.model.load_size)
    e_a, _ = embed(model, a, cfg.model.image_size)
    e_q, _ = embed(model, queries, cfg.model.image_size)
    _, idx = exact_search(e_a, e_q, len(table))
    return {(qi, table.image_ids[j]): r for qi in range(len(queries)) for r, j in enumerate(idx[qi])}


def test_fine_tuning_on_clicks_moves_similar_items_up(synth_dir, tmp_path):
    table = load_table(synth_dir, "train").subset(range(120))
    test = load_table(synth_dir, "test").subset(range(6))
    train(tiny_cfg(epochs=2), table, tmp_path / "base")
    queries, _, _ = prepare(test.paths, 72)
    before = _ranks(tmp_path / "base", table, queries)

    # each user marks two mid-ranked archive cases "similar" and the two top-ranked ones "not similar"
    store = FeedbackStore(tmp_path / "fb.db")
    marked_pos, marked_neg = [], []
    for qi, path in enumerate(test.paths):
        qid = store.add_query(Path(path).read_bytes())
        order = sorted((r, iid) for (q, iid), r in before.items() if q == qi)
        for _, iid in order[40:42]:
            store.add_feedback(qid, iid, True)
            marked_pos.append((qi, iid))
        for _, iid in order[:2]:
            store.add_feedback(qid, iid, False)
            marked_neg.append((qi, iid))
    fb = read_feedback_triplets(tmp_path / "fb.db", set(table.image_ids))
    assert len(fb.query_images) == 6 and len(fb.triplets) == 6 * 4

    cfg = tiny_cfg(epochs=8, feedback_weight=5.0)
    train(cfg, table, tmp_path / "tuned", init=tmp_path / "base", feedback=fb)
    after = _ranks(tmp_path / "tuned", table, queries)
    pos_before = np.mean([before[k] for k in marked_pos])
    pos_after = np.mean([after[k] for k in marked_pos])
    neg_before = np.mean([before[k] for k in marked_neg])
    neg_after = np.mean([after[k] for k in marked_neg])
    assert pos_after < pos_before - 5, (pos_before, pos_after)
    assert neg_after > neg_before, (neg_before, neg_after)
