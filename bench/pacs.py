"""What a PACS costs: `chaiderm archive add --dicomweb` and `chaiderm query --dicomweb --study --store`
against the same work on files, with the same model, index and photographs.

N synthetic dermoscopy photographs (`chaiderm.data.synthetic`, 256x256) are written once as DICOM
Dermoscopic Photography files; the same files are stored into a temporary Orthanc (DICOMweb plugin, on
loopback, as the tests start it) as one study. An archive of 300 synthetic cases is indexed with a tiny
untrained model (the tiny backbone: the model's cost is the same on both sides; what differs is the PACS).
Then, each command in a fresh process as a user runs it (model and index loading included):
- add: `archive add --data FOLDER` (the N .dcm files) against `archive add --dicomweb URL --study UID`
  (search, retrieval, the same embedding), each on its own copy of the index;
- query: `query FILES --reports none` against `query --dicomweb URL --study UID` (the answers only: what the
  PACS adds is search and retrieval); and `query FILES --reports html` (the evidence of each image written to
  disk: 31 PNGs of 224 px per image) against `query --dicomweb URL --study UID --store` (the same evidence
  drawn into one Secondary Capture per image, an SR per image, all stored back in one STOW-RS request).
Each pair runs --repeats times in alternating order; the medians are reported.
Writes bench/pacs.json (or --out):  python bench/pacs.py --n 100
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.pacs_fixture: the Orthanc the tests start
CLI = [sys.executable, "-m", "chaiderm.cli"]


def run(args: list[str]) -> float:
    """Wall seconds of one chaiderm command; its own error output if it fails."""
    t = time.perf_counter()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"chaiderm {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "pacs.json")
    args = ap.parse_args()

    import numpy as np
    import torch
    from pydicom.uid import generate_uid

    from chaiderm.config import ModelConfig, RunConfig
    from chaiderm.data.synthetic import generate
    from chaiderm.models import build_model, save_model
    from tests.pacs import pacs_fixture as pf

    why = pf.missing()
    if why:
        sys.exit(f"bench/pacs.py: {why}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        syn, run_dir, ix = tmp / "syn", tmp / "run", tmp / "ix"
        run(["synth", "--out", str(syn), "--n-train", "300", "--n-val", "10", "--n-test", "10", "--size", "256"])
        torch.manual_seed(0)
        cfg = RunConfig(model=ModelConfig(backbone="tiny", image_size=224, load_size=256))
        save_model(build_model(cfg.model).eval(), run_dir, cfg)
        run(["index", "--model", str(run_dir), "--data", str(syn), "--out", str(ix)])

        study, series = generate_uid(), generate_uid()
        files = tmp / "new" / "images"
        files.mkdir(parents=True)
        photos, rows = [], []
        for i, case in enumerate(generate(args.n, size=256, seed=7, start=10_000, difficulty="standard")):
            ds = pf.photograph(np.ascontiguousarray(case.image), study, series, number=i + 1)
            ds.preamble = b"\0" * 128
            ds.save_as(files / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            photos.append(ds)
            rows.append(f"{ds.SOPInstanceUID},{case.diagnosis}\n")
        labels = tmp / "new" / "labels.csv"
        labels.write_text("image_id,diagnosis\n" + "".join(rows))

        with pf.running_orthanc(tmp / "orthanc") as orthanc:
            t = time.perf_counter()
            pf.store(orthanc, photos)
            stow_s = time.perf_counter() - t
            url = orthanc.dicomweb
            names = ("add_files", "add_pacs", "query_files", "query_pacs", "query_files_html", "query_pacs_store")
            times: dict[str, list[float]] = {name: [] for name in names}
            for r in range(args.repeats):
                order = ["files", "pacs"] if r % 2 == 0 else ["pacs", "files"]
                for side in order:
                    copy = tmp / f"ix-{side}-{r}"
                    shutil.copytree(ix, copy)
                    source = ["--data", str(tmp / "new")] if side == "files" else [
                        "--dicomweb", url, "--study", study, "--labels", str(labels)]  # fmt: skip
                    times[f"add_{side}"].append(run(["archive", "add", "--index", str(copy), *source]))
                common = ["--model", str(run_dir), "--index", str(ix), "--k", "10"]
                images = sorted(map(str, files.iterdir()))
                pacs = ["--dicomweb", url, "--study", study]
                for side in order:
                    if side == "files":
                        times["query_files"].append(run(["query", *images, *common, "--reports", "none"]))
                    else:
                        times["query_pacs"].append(run(["query", *common, *pacs]))
                for side in order:
                    if side == "files":
                        out = ["--out", str(tmp / f"reports-{r}"), "--reports", "html"]
                        times["query_files_html"].append(run(["query", *images, *common, *out]))
                    else:
                        times["query_pacs_store"].append(run(["query", *common, *pacs, "--store"]))
            stored = len(pf_instances(url, study)) - args.n
            orthanc_version = orthanc.rest("/system")["Version"]

    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    result = {
        "command": f"python bench/pacs.py --n {args.n} --repeats {args.repeats}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "pacs": f"Orthanc {orthanc_version} with its DICOMweb plugin, on loopback",
        "model": "tiny backbone, untrained (seed 0), image 224 / load 256; archive: 300 synthetic cases",
        "n_instances": args.n,
        "image": "256x256 RGB, DICOM Dermoscopic Photography, explicit VR little endian, uncompressed",
        "stow_n_instances_s": round(stow_s, 2),
        "seconds": times,
        "median_s": med,
        "ratio_add_pacs_to_files": round(med["add_pacs"] / med["add_files"], 2),
        "ratio_query_pacs_to_files": round(med["query_pacs"] / med["query_files"], 2),
        "ratio_query_store_to_files_html": round(med["query_pacs_store"] / med["query_files_html"], 2),
        "per_image_ms": {k: round(1000 * v / args.n, 1) for k, v in med.items()},
        "objects_stored_back": stored,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def pf_instances(url: str, study: str) -> list:
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url).search_for_instances(study, limit=100_000)


if __name__ == "__main__":
    main()
