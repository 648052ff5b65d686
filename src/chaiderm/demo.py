"""The one-command demo: synthetic data -> Baseline, Disease and Hierarchical embeddings -> index ->
evidence reports for held-out queries -> ``report.html`` and ``demo.json``."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from chaiderm._io import write_json, write_text
from chaiderm.config import ModelConfig, RunConfig, TrainConfig
from chaiderm.data.images import load_image
from chaiderm.data.records import load_table
from chaiderm.data.synthetic import write_dataset
from chaiderm.data.transforms import prepare
from chaiderm.evaluation.retrieval import evaluate_retrieval
from chaiderm.evidence.report import CSS, write_query_report
from chaiderm.models.embedding import build_model, load_model
from chaiderm.pipeline import Predictor, build_index
from chaiderm.training import train


@dataclass
class DemoSettings:
    backbone: str = "efficientnet_lite0"
    n_train: int = 600
    n_val: int = 90
    n_test: int = 150
    size: int = 128
    image_size: int = 112
    # 16: evidence maps of 7x7 cells at the demo's 112-pixel input (stride 32 would give 4x4 blobs);
    # replicate padding: no frame from the padding in the maps a newcomer sees first
    map_stride: int = 16
    padding: str = "replicate"
    epochs: int = 3  # the Disease embedding's
    # the Hierarchical embedding starts from the Disease one and needs fewer epochs to learn the groups
    hierarchical_epochs: int = 2
    # per-epoch validation re-embeds the whole archive, a third of the demo's training time; the demo shows
    # the held-out figures at the end instead, and keeps each embedding's last epoch
    validate: bool = False
    queries: int = 4
    k: int = 10
    difficulty: str = "standard"
    seed: int = 0


def run_demo(
    out: str | Path,
    s: DemoSettings,
    log: Callable[[str], None] = print,
    *,
    on_step: Callable[[str, int, int, int, float], None] | None = None,
) -> dict:
    """Run the demo; ``on_step(model name, epoch, step, steps, loss)`` reports training progress."""
    out = Path(out)
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    data = out / "data"
    t = time.perf_counter()
    write_dataset(
        data,
        splits={"train": s.n_train, "val": s.n_val, "test": s.n_test},
        size=s.size,
        seed=s.seed,
        difficulty=s.difficulty,
    )
    seconds["data"] = time.perf_counter() - t
    log(f"synthetic data: {s.n_train} train / {s.n_val} val / {s.n_test} held-out test in {data}")
    train_t, val_t, test_t = (load_table(data, sp) for sp in ("train", "val", "test"))

    mcfg = ModelConfig(
        backbone=s.backbone, image_size=s.image_size, load_size=s.size, map_stride=s.map_stride, padding=s.padding
    )
    metrics: dict[str, dict] = {}
    t = time.perf_counter()
    decoded = (prepare(train_t.paths, s.size)[0], prepare(test_t.paths, s.size)[0])  # once for all three
    baseline = build_model(ModelConfig(**{**asdict(mcfg), "head": "none"}))
    metrics["Baseline"] = evaluate_retrieval(baseline, s.image_size, s.size, train_t, test_t, decoded=decoded)
    seconds["baseline"] = time.perf_counter() - t
    log(f"Baseline (untrained embedding): AUC@10 {metrics['Baseline']['auc']['10']:.3f}")

    runs = {}
    plan = (("Disease", "disease", None, s.epochs), ("Hierarchical", "hierarchical", "Disease", s.hierarchical_epochs))
    for name, logic, init, epochs in plan:
        t = time.perf_counter()
        cfg = RunConfig(
            model=ModelConfig(**asdict(mcfg)),
            train=TrainConfig(
                logic=logic, epochs=epochs, batch_size=32, seed=s.seed, select_metric="auc" if s.validate else "last"
            ),
        )
        cfg.data.train, cfg.data.val = str(data / "train"), str(data / "val")
        runs[name] = out / "runs" / name.lower()
        step = (lambda e, i, n, loss, name=name: on_step(name, e, i, n, loss)) if on_step else None
        val = val_t if s.validate else None
        train(cfg, train_t, runs[name], val_table=val, init=runs[init] if init else None, force=True, on_step=step)
        model, _ = load_model(runs[name])
        seconds[f"train_{name.lower()}"] = time.perf_counter() - t
        metrics[name] = evaluate_retrieval(model, s.image_size, s.size, train_t, test_t, decoded=decoded)
        log(f"{name}: AUC@10 {metrics[name]['auc']['10']:.3f}, REL@10 {metrics[name]['rel']['10']:.2f}")

    t = time.perf_counter()
    model, cfg = load_model(runs["Hierarchical"])
    index, _ = build_index(model, cfg, train_t, model_dir=runs["Hierarchical"])
    index.save(out / "index")
    predictor = Predictor.load(runs["Hierarchical"], out / "index")
    records = []
    for i in range(min(s.queries, len(test_t))):
        img = load_image(test_t.paths[i])
        res = predictor.predict(img, k=s.k, image_id=test_t.image_ids[i])
        neigh = predictor.neighbor_images(res)
        rec = write_query_report(
            out / "queries",
            test_t.image_ids[i],
            res.image,
            res.prediction,
            neigh,
            res.qams,
            res.rams,
            true_diagnosis=test_t.diagnoses[i],
        )
        records.append(rec)
    seconds["index_and_queries"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start

    summary = {
        "settings": asdict(s),
        "metrics": {
            name: {k: m.get(k) for k in ("auc", "rel", "jaccard", "mass_in_mask")} for name, m in metrics.items()
        },
        "queries": [
            {
                "image_id": r["image_id"],
                "true_diagnosis": r["true_diagnosis"],
                "melanoma_probability": r["melanoma_probability"],
                "summary": r["summary"],
                "class_probabilities": r["class_probabilities"],
                "neighbors": [
                    {k: n[k] for k in ("rank", "image_id", "diagnosis", "group", "distance")} for n in r["neighbors"]
                ],
                "evidence": [
                    {"rank": n["rank"], "qam": f"queries/{n['qam']}", "ram": f"queries/{n['ram']}"}
                    for n in r["neighbors"]
                ],
                "report": f"queries/{r['image_id']}.html",
            }
            for r in records
        ],
        "seconds": seconds,
    }
    write_json(out / "demo.json", summary)
    write_text(out / "report.html", _report_html(summary, records))
    log(f"done in {seconds['total']:.0f} s")
    summary["serve"] = serve_command(runs["Hierarchical"], out / "index")
    return summary


def serve_command(model: Path, index: Path) -> str:
    """The exact command that opens this model and index in the evidence viewer."""
    import shlex

    return f"chaiderm serve --model {shlex.quote(str(model))} --index {shlex.quote(str(index))}"


def _report_html(summary: dict, records: list[dict]) -> str:
    e = html.escape
    ks = ["3", "5", "10", "20", "40"]
    rows = []
    for name, m in summary["metrics"].items():
        auc = "".join(f"<td>{m['auc'][k]:.3f}</td>" if m.get("auc") and k in m["auc"] else "<td>-</td>" for k in ks)
        rel = "".join(f"<td>{m['rel'][k]:.2f}</td>" if m.get("rel") and k in m["rel"] else "<td>-</td>" for k in ks)
        ja = f"{m['jaccard']:.3f}" if m.get("jaccard") is not None else "-"
        rows.append(f"<tr><th>{e(name)}</th>{auc}{rel}<td>{ja}</td></tr>")
    head = "".join(f"<th>AUC@{k}</th>" for k in ks) + "".join(f"<th>REL@{k}</th>" for k in ks) + "<th>JA</th>"
    queries = []
    for r in records:
        cards = "".join(
            f'<figure class="{"mel" if n["diagnosis"] == "melanoma" else ""}"><img src="queries/{e(n["image"])}">'
            f"<figcaption>#{n['rank']} {e(n['diagnosis'])}</figcaption></figure>"
            for n in r["neighbors"][:5]
        )
        pairs = "".join(
            f'<div class="pair"><img src="queries/{e(r["query_image"])}"><img src="queries/{e(n["qam"])}">'
            f'<img src="queries/{e(n["image"])}"><img src="queries/{e(n["ram"])}"></div>'
            for n in r["neighbors"][:3]
        )
        queries.append(
            f"<h3>{e(r['image_id'])}: true {e(r['true_diagnosis'] or '?')}, melanoma probability "
            f"{r['positive_probability']:.2f}: {e(r['summary'])} "
            f'(<a href="queries/{e(r["image_id"])}.html">full report</a>)</h3>'
            f'<div class="row"><figure><img src="queries/{e(r["query_image"])}"><figcaption>query</figcaption>'
            f'</figure>{cards}</div><div class="row">{pairs}</div>'
        )
    s = summary["settings"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>chaiderm demo</title><style>{CSS}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:.85rem}}</style></head><body>
<h1>chaiderm demo</h1>
<p><strong>Synthetic images, not patients: a demonstration of the pipeline, not a clinical result.</strong></p>
<p>Synthetic dermoscopy ({s["n_train"]} archive / {s["n_test"]} held-out queries, backbone {e(s["backbone"])}).
Baseline = untrained (ImageNet) embedding; Disease and Hierarchical = CHAI triplet embeddings (Eq. 1).
AUC@k: melanoma vs rest by k-NN vote; REL@k: results in the query's own similarity group;
JA: Jaccard of each query's QAM (vs its nearest result) against the exact lesion mask.</p>
<table><tr><th></th>{head}</tr>{"".join(rows)}</table>
<h2>Held-out queries (Hierarchical embedding)</h2>{"".join(queries)}
<p>Total time {summary["seconds"]["total"]:.0f} s.</p></body></html>"""
