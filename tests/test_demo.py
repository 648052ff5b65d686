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


def test_demo_command_ends_with_a_short_table_and_the_serve_line(tmp_path):
    """The demo's last screen was a 60-line JSON dump before the `chaiderm serve` line."""
    from typer.testing import CliRunner

    from chaiderm.cli import app

    args = ["demo", "--out", str(tmp_path / "d"), "--backbone", "tiny", "--n-train", "90", "--n-test", "45",
            "--size", "64", "--image-size", "56", "--epochs", "1", "--queries", "1",
            "--difficulty", "easy"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    tail = r.output[r.output.index("synthetic images, not patients") :].splitlines()
    assert len(tail) <= 16 and "{" not in "\n".join(tail), "\n".join(tail)
    assert any("Hierarchical" in ln for ln in tail) and any("Baseline (ImageNet, not trained)" in ln for ln in tail)
    assert tail[-1].strip().startswith("chaiderm serve --model ")
