import json

from chaiderm.demo import DemoSettings, run_demo


def test_demo_writes_report_and_json(tmp_path):
    s = DemoSettings(
        backbone="tiny",
        n_train=90,
        n_val=30,
        n_test=45,
        size=64,
        image_size=56,
        epochs=1,
        queries=2,
        k=5,
        difficulty="easy",
    )
    summary = run_demo(tmp_path / "demo", s, log=lambda m: None)
    d = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert set(d["metrics"]) == {"Baseline", "Disease", "Hierarchical"}
    for m in d["metrics"].values():
        assert set(m["auc"]) >= {"3", "5", "10", "20", "40"} and 0 <= m["auc"]["10"] <= 1
        assert m["rel"]["10"] >= 0 and 0 <= m["jaccard"] <= 1
    q = d["queries"][0]
    assert {"image_id", "true_diagnosis", "melanoma_probability", "neighbors", "evidence"} <= set(q)
    assert len(q["neighbors"]) == 5 and (tmp_path / "demo" / q["evidence"][0]["qam"]).exists()
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Hierarchical" in html and "AUC@10" in html
    assert summary["seconds"]["total"] > 0
