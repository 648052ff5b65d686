"""Per-query evidence report: ``<name>.json`` + ``<name>.html`` + PNGs (query, ranked neighbours
with melanoma in a red border as the paper's Fig. 3, QAM/RAM pairs laid out as its Fig. 4)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from chaiderm._io import write_json, write_text
from chaiderm.evidence.render import overlay, thumbnail
from chaiderm.interfaces import Prediction

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;max-width:1200px}
.prob{font-size:1.6rem;font-weight:600}.row{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;text-align:center;font-size:.8rem}figure img{width:128px;height:128px;border:4px solid #ccc}
figure.mel img{border-color:#d00}.pair{display:grid;grid-template-columns:128px 128px;gap:4px;
border:1px solid #ddd;padding:6px}.pair img{width:128px;height:128px}.pair .cap{grid-column:span 2;font-size:.8rem}
.novelty{padding:.5rem .8rem;border-left:6px solid #888;background:#f4f4f4}
.novelty.unlike{border-color:#d00;background:#fde8e8;font-weight:600}
"""


# reports are opened from disk: no script may run in them, whatever a label or id contains
REPORT_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _save_png(path: Path, img: np.ndarray) -> None:
    Image.fromarray(img).save(path, format="PNG")


def write_query_report(
    out_dir: str | Path,
    name: str,
    query_image: np.ndarray,
    prediction: Prediction,
    neighbor_images: list[np.ndarray],
    qams: np.ndarray,
    rams: np.ndarray,
    *,
    true_diagnosis: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """Write the report files; returns the JSON record (also written as ``<name>.json``)."""
    out = Path(out_dir)
    assets = out / f"{name}_files"
    assets.mkdir(parents=True, exist_ok=True)
    q = thumbnail(query_image)
    _save_png(assets / "query.png", q)
    neighbours = []
    for n, img, qam, ram in zip(prediction.neighbors, neighbor_images, qams, rams, strict=True):
        r = thumbnail(img)
        stem = f"{n.rank:02d}"
        _save_png(assets / f"result_{stem}.png", r)
        _save_png(assets / f"qam_{stem}.png", overlay(q, qam))
        _save_png(assets / f"ram_{stem}.png", overlay(r, ram))
        rec = n.to_dict()
        rec.pop("image_path", None)
        rec.update(
            image=f"{assets.name}/result_{stem}.png",
            qam=f"{assets.name}/qam_{stem}.png",
            ram=f"{assets.name}/ram_{stem}.png",
        )
        neighbours.append(rec)
    record = _record(prediction, neighbours, f"{assets.name}/query.png", true_diagnosis, region)
    write_json(out / f"{name}.json", record)
    write_text(out / f"{name}.html", render_html(record))
    return record


def write_query_json(
    out_dir: str | Path,
    name: str,
    prediction: Prediction,
    *,
    true_diagnosis: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """Only ``<name>.json``: the vote and its neighbours (ids, diagnoses, distances), no images or maps, so
    a batch can keep each answer's evidence list for a few kilobytes. Returns the record."""
    neighbours = []
    for n in prediction.neighbors:
        rec = n.to_dict()
        rec.pop("image_path", None)
        neighbours.append(rec)
    record = _record(prediction, neighbours, None, true_diagnosis, region)
    write_json(Path(out_dir) / f"{name}.json", record)
    return record


def _record(
    prediction: Prediction,
    neighbours: list[dict[str, Any]],
    query_image: str | None,
    true_diagnosis: str | None,
    region: str | None,
) -> dict[str, Any]:
    return {
        "image_id": prediction.image_id,
        "true_diagnosis": true_diagnosis,
        "positive_class": prediction.positive_class,
        "positive_probability": prediction.positive_probability,
        "melanoma_probability": prediction.melanoma_probability,
        "class_probabilities": dict(prediction.class_probabilities),
        "summary": prediction.summary(),
        "k": prediction.k,
        "vote": prediction.vote,
        "uncertainty": prediction.uncertainty,  # novelty, unlike_archive, calibrated probabilities, set
        "region": region,  # boxes searched (pixels of the query's square), or None: the whole image
        "query_image": query_image,
        "neighbors": neighbours,
    }


def _novelty_html(u: dict[str, Any]) -> str:
    """The novelty in words, shown before the vote; a query unlike the archive says so first."""
    words = u.get("novelty_words") or "novelty unknown"
    if u.get("unlike_archive"):
        return (
            f'<p class="novelty unlike">{html.escape(words[:1].upper() + words[1:])}. Read the vote below as a list '
            "of the closest cases only, not as a diagnosis.</p>"
        )
    return f'<p class="novelty">Novelty: {html.escape(words)}</p>'


def render_html(record: dict[str, Any]) -> str:
    e = html.escape
    pos = record.get("positive_class", "melanoma")
    cards, pairs = [], []
    for n in record["neighbors"]:
        cls = "mel" if n["diagnosis"] == pos else ""
        meta = n.get("metadata") or {}
        about = ", ".join(e(str(meta[f])) for f in ("sex", "age", "site") if f in meta)
        credit = f"<br>&copy; {e(str(meta['attribution']))}" if meta.get("attribution") else ""
        label = (
            f"#{n['rank']} {e(n['image_id'])}<br>{e(n['diagnosis'])}<br>{e(str(n['group'] or '-'))}"
            f"<br>d={n['distance']:.3f}" + (f"<br>{about}" if about else "") + credit
        )
        cards.append(
            f'<figure class="{cls}"><img src="{e(n["image"])}" alt="result {n["rank"]}">'
            f"<figcaption>{label}</figcaption></figure>"
        )
        pairs.append(
            f'<div class="pair"><img src="{e(record["query_image"])}" alt="query">'
            f'<img src="{e(n["qam"])}" alt="QAM"><img src="{e(n["image"])}" alt="result">'
            f'<img src="{e(n["ram"])}" alt="RAM"><div class="cap">#{n["rank"]} {e(n["diagnosis"])}: '
            "query | QAM / result | RAM</div></div>"
        )
    truth = f" (true: {e(record['true_diagnosis'])})" if record.get("true_diagnosis") else ""
    weighed = ", each case weighed by its closeness: 1 / squared distance" if record.get("vote") == "distance" else ""
    u = record.get("uncertainty") or {}
    cal = u.get("calibrated_probabilities") or {}
    dist = "".join(
        f"<li>{e(d.replace('_', ' '))}: vote share {p:.2f}"
        + (f", calibrated probability {cal[d]:.2f}" if d in cal else "")
        + "</li>"
        for d, p in record.get("class_probabilities", {}).items()
    )
    novelty = _novelty_html(u)
    sets = ""
    if u.get("set_words"):
        held = " (holds the true diagnosis of that share of held-out cases like the archive's)"
        sets = f"<p>Prediction set: {e(u['set_words'])}{held if u.get('prediction_set') is not None else ''}</p>"
    cal_pos = (
        f" Calibrated {e(pos)} probability ({e(str(u.get('calibration_method')))}): {cal[pos]:.2f}."
        if pos in cal
        else ""
    )
    region = (
        f"<p>Searched by the region(s) {e(record['region'])} of the query (pixels of its square), "
        "not the whole image.</p>"
        if record.get("region")
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{REPORT_CSP}">
<title>chaiderm: {e(record["image_id"])}</title>
<style>{CSS}</style></head><body>
<h1>Query {e(record["image_id"])}{truth}</h1>
<div class="row"><figure><img src="{e(record["query_image"])}" alt="query"><figcaption>query</figcaption></figure>
<div>{novelty}<p class="prob">{e(record.get("summary", ""))}</p>{region}
<p>{e(pos)} vote share: {record["positive_probability"]:.2f}, the share of {e(pos)} among the {record["k"]}
nearest archive cases (kNN vote{weighed}); a share is not a probability.{cal_pos} All diagnoses among
them:</p><ul>{dist}</ul>{sets}</div></div>
<h2>Nearest cases (red border: {e(pos)})</h2><div class="row">{"".join(cards)}</div>
<h2>Query / result activation maps</h2>
<p>Bright regions contributed most to the distance between the query and each result (Eq. 2).</p>
<div class="row">{"".join(pairs)}</div></body></html>
"""
