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
    assert "Synthetic images, not patients" in html
    assert summary["serve"].startswith("chaiderm serve --model ") and "--index" in summary["serve"]
    assert "of 5 nearest cases:" in q["summary"] and abs(sum(q["class_probabilities"].values()) - 1) < 1e-9


def test_demo_settings_give_maps_of_at_least_7x7_without_a_padding_imprint():
    import torch

    from chaiderm.config import ModelConfig
    from chaiderm.models.embedding import build_model

    s = DemoSettings()
    cfg = ModelConfig(image_size=s.image_size, load_size=s.size, map_stride=s.map_stride, padding=s.padding)
    model = build_model(cfg, load_pretrained=False).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.full((1, 3, s.image_size, s.image_size), 0.2))
    assert min(maps.shape[2:]) >= 7
    a = maps[0].sum(0)
    assert float(a.std()) <= 1e-5 * float(a.mean()) + 1e-12  # a uniform image: a flat map
