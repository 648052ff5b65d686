"""Identical and near-duplicate images, within a set and across two, with a report a person can check."""

import csv
import io

from PIL import Image
from typer.testing import CliRunner

from chaiderm.cli import app


def _set(synth_dir, root, ids, extra=()):
    (root / "images").mkdir(parents=True)
    rows = []

    def big(i):  # photographs are larger than the 72-pixel test images; a re-encode is subtler there
        return Image.open(synth_dir / "train" / "images" / f"{i}.png").convert("RGB").resize((256, 256))

    for i in ids:
        big(i).save(root / "images" / f"{i}.png")
        rows.append((i, "nevus"))
    for new_id, src, how in extra:
        img = big(src)
        if how == "copy":  # the same PNG bytes as the original's (PNG encoding is deterministic)
            img.save(root / "images" / f"{new_id}.png")
        else:  # re-encoded as a JPEG: other bytes, the same photograph
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=92)
            (root / "images" / f"{new_id}.jpg").write_bytes(buf.getvalue())
        rows.append((new_id, "nevus"))
    with open(root / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("image_id", "diagnosis"), *rows])
    return root


def test_duplicates_within_and_across_sets(synth_dir, tmp_path):
    ids = sorted(p.stem for p in (synth_dir / "train" / "images").glob("*.png"))[:40]
    a = _set(synth_dir, tmp_path / "a", ids[:20], [("a_copy", ids[3], "copy")])
    b = _set(synth_dir, tmp_path / "b", ids[20:], [("b_jpeg", ids[5], "jpeg"), ("b_copy", ids[7], "copy")])
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["duplicates", "--data", str(a), "--against", str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    with open(out / "pairs.csv") as fh:
        pairs = {frozenset((row["image_a"], row["image_b"])): row["kind"] for row in csv.DictReader(fh)}
    assert pairs[frozenset(("a:a_copy", f"a:{ids[3]}"))] == "identical file"
    assert pairs[frozenset((f"a:{ids[7]}", "b:b_copy"))] == "identical file"
    assert pairs[frozenset((f"a:{ids[5]}", "b:b_jpeg"))] == "near duplicate"
    assert len(pairs) == 3  # nothing else among 43 distinct synthetic lesions
    html = (out / "index.html").read_text()
    assert "3 duplicate pair(s)" in html and "thumbs/" in html and "Content-Security-Policy" in html
    assert "1\tidentical file, across sets" in r.output and "1\tnear duplicate, across sets" in r.output
