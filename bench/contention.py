"""How chaiderm behaves beside another CPU-bound job on a 2-core machine.

1. A short training workload (EfficientNet-Lite0, batch 16 at 112 px, 40 steps) alone and beside an
   identical competitor, with libgomp's own spin count (300,000) and with chaiderm's (1,000).
2. `chaiderm demo` alone, then beside a competitor that trains for as long as the demo runs.
3. `chaiderm serve` (ImageNet Lite0 over 100 synthetic cases): 100 sequential queries with 10 evidence
   pairs each, alone and beside the competitor.

Writes bench/contention.json. Run it on an otherwise idle machine:  python bench/contention.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving import build_archive, start_server

WORKLOAD = """
import sys, time
import chaiderm, torch
from chaiderm.config import ModelConfig
from chaiderm.models.embedding import build_model
torch.manual_seed(0)
m = build_model(ModelConfig(image_size=112, load_size=128)).train()
opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3)
x = torch.randn(16, 3, 112, 112).contiguous(memory_format=torch.channels_last)
steps, until = int(sys.argv[1]), float(sys.argv[2])
t, c, i = time.perf_counter(), time.process_time(), 0
while i < steps or time.time() < until:
    opt.zero_grad(); m(x).sum().backward(); opt.step(); i += 1
print(time.perf_counter() - t, time.process_time() - c)
"""


def _env(spin: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GOMP_SPINCOUNT", None)
    if spin is not None:
        env["GOMP_SPINCOUNT"] = spin
    return env


def workload(steps: int, spin: str | None, until: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKLOAD, str(steps), str(until)], env=_env(spin), stdout=subprocess.PIPE, text=True
    )


def timed(proc: subprocess.Popen) -> dict[str, float]:
    wall, cpu = (float(v) for v in proc.communicate()[0].split())
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def steps_alone_and_beside(spin: str) -> dict[str, dict[str, float]]:
    alone = timed(workload(40, spin))
    rival = workload(0, spin, until=time.time() + 3600)
    time.sleep(3)  # the competitor is past its start-up
    beside = timed(workload(40, spin))
    rival.kill()
    rival.wait()
    return {"alone": alone, "beside": beside, "slowdown": round(beside["wall_s"] / alone["wall_s"], 2)}


def demo(out: Path, rival: bool) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    comp = workload(0, None, until=time.time() + 3600) if rival else None
    if comp is not None:
        time.sleep(3)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(["chaiderm", "demo", "--out", str(out)], check=True, env=_env(None), capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if comp is not None:
        comp.kill()
        comp.wait()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def serve_latency(tmp: Path, n: int = 100) -> dict[str, dict[str, float]]:
    import http.client

    run, ix = build_archive(tmp, env=_env(None))
    srv, port = start_server(run, ix, tmp / "f.db", env=_env(None))
    images = sorted((tmp / "syn" / "test" / "images").glob("*.png"))
    b = "x0x0x"

    def query(path: Path) -> float:
        body = (
            (
                f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{b}--\r\n".encode()
        )
        t = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", "/api/query", body=body, headers={"Content-Type": f"multipart/form-data; boundary={b}"})
        assert c.getresponse().status == 200
        c.close()
        return time.perf_counter() - t

    try:
        query(images[0])  # warm-up
        out = {}
        for label, rival in (("alone", False), ("beside", True)):
            comp = workload(0, None, until=time.time() + 3600) if rival else None
            if comp is not None:
                time.sleep(10)  # the competitor has imported torch, built its model and is training
            lat = sorted(query(images[i % len(images)]) for i in range(n))
            if comp is not None:
                comp.kill()
                comp.wait()
            out[label] = {"p50_ms": round(1000 * lat[n // 2], 1), "p95_ms": round(1000 * lat[int(0.95 * n)], 1)}
        out["slowdown_p50"] = round(out["beside"]["p50_ms"] / out["alone"]["p50_ms"], 2)
        return out
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/contention.json"))
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--only-serve", action="store_true", help="measure serving only; merge into --out")
    a = ap.parse_args()
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}"}
    if a.only_serve:
        res = json.loads(a.out.read_text()) if a.out.exists() else res
        with tempfile.TemporaryDirectory() as tmp:
            res["serve"] = serve_latency(Path(tmp))
        print(json.dumps(res["serve"]), flush=True)
        a.out.write_text(json.dumps(res, indent=2))
        return
    res["training_steps"] = {
        "libgomp_default_spin_300000": steps_alone_and_beside("300000"),
        "chaiderm_spin_1000": steps_alone_and_beside("1000"),
    }
    print(json.dumps(res["training_steps"]), flush=True)
    if not a.skip_demo:
        with tempfile.TemporaryDirectory() as tmp:
            alone = demo(Path(tmp) / "a", rival=False)
            beside = demo(Path(tmp) / "b", rival=True)
        res["demo"] = {"alone": alone, "beside": beside, "slowdown": round(beside["wall_s"] / alone["wall_s"], 2)}
        print(json.dumps(res["demo"]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        res["serve"] = serve_latency(Path(tmp))
    print(json.dumps(res["serve"]), flush=True)
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
