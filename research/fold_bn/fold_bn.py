"""Would folding batch norms into their convolutions make a Lite0 member's query faster on 2 cores?

    python -m research.fold_bn.fold_bn [--processes 6] [--iters 400] [--out research/fold_bn/fold_bn.json]

Why: the recipe's member count is capped by query latency (research/recipe_rounds/where_it_stands.md, lead 3),
and a prototype of
2026-11-27 saw a member's forward about 15% faster with every eval-mode batch norm folded into the
convolution before it (EfficientNet-Lite0 has one after each of its 49 convolutions). Folding changes no
output beyond float rounding (checked here), so the only question is time.

Protocol: in each of ``--processes`` fresh Python processes (the machine's state differs from process to
process), a Lite0 embedding net with ImageNet weights and its folded copy (``models/fold.py``, as queries
are served) each compute evidence maps for one 224 x 224 image ``--iters`` times, the two interleaved so
that drift in the machine's speed hits both alike; per process, the median time of each and their ratio.

Adoption rule, written after an exploratory run of this protocol on 2026-12-02 (folded faster in 4 of 6
processes, slower in 2), so the recorded run is a record, not a blind test: folding goes into the query path
if the folded forward is faster in every process and by at least 5% in the median over processes; otherwise
it is left out (one more layer of code that must be kept right, for no gain a user can count on).

Outcome (2026-12-02, this 2-core CPU): see ``fold_bn.json`` and docs/design.md ("Folded batch norms").
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from research._common import REPO

HERE = Path(__file__).resolve().parent


def one_process(iters: int) -> dict:
    import numpy as np
    import torch

    from chaiderm.config import ModelConfig
    from chaiderm.models.embedding import build_model

    torch.manual_seed(0)
    plain = build_model(ModelConfig()).eval()
    folded = build_model(ModelConfig()).eval()
    folded.load_state_dict(plain.state_dict())
    n = folded.fold()  # what Predictor.load does (models/fold.py)
    folded.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 224, 224).to(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {"plain": [], "folded": []}
    with torch.inference_mode():
        g0, g1 = plain.evidence_maps(x)[0], folded.evidence_maps(x)[0]
        err = float((g1 - g0).abs().max() / g0.abs().max())
        for _ in range(5):
            plain.evidence_maps(x), folded.evidence_maps(x)
        for i in range(iters):
            order = (("plain", plain), ("folded", folded)) if i % 2 else (("folded", folded), ("plain", plain))
            for name, m in order:
                t0 = time.perf_counter()
                m.evidence_maps(x)
                times[name].append((time.perf_counter() - t0) * 1000)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "folded_pairs": n,
        "max_relative_difference": err,
        "plain_median_ms": med["plain"],
        "folded_median_ms": med["folded"],
        "ratio": med["folded"] / med["plain"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=6)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--out", type=Path, default=HERE / "fold_bn.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one_process(a.iters)))
        return
    import numpy as np

    from chaiderm._io import write_json

    t0 = time.time()
    runs = []
    for _ in range(a.processes):
        cmd = [sys.executable, "-m", "research.fold_bn.fold_bn", "--child", "--iters", str(a.iters)]
        runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout))
        print(json.dumps(runs[-1]))
    ratios = [r["ratio"] for r in runs]
    faster_everywhere = all(r < 1 for r in ratios)
    gain = 1 - float(np.median(ratios))
    adopt = faster_everywhere and gain >= 0.05
    summary = {
        "processes": runs,
        "median_ratio": float(np.median(ratios)),
        "faster_in": sum(r < 1 for r in ratios),
        "decision": f"folding {'adopted' if adopt else 'not adopted'}: faster in {sum(r < 1 for r in ratios)} "
        f"of {len(ratios)} processes, median gain {gain:+.1%}",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
        "wall_s": time.time() - t0,
    }
    write_json(a.out, summary)
    print(summary["decision"])


if __name__ == "__main__":
    main()
