"""The viewer's memory under hostile uploads: is it bounded?

Starts `chaiderm serve` (an ImageNet EfficientNet-Lite0 model over a small synthetic archive) and measures
its peak resident memory (VmHWM) while, in turn:
  - 8 clients at once each upload a 49-megapixel PNG (7000 x 7000, a few MB compressed);
  - thin strips (1 x 20,000 and 1 x 200,000 pixels, a few hundred bytes each) are uploaded;
  - 8 clients stream 1 GB each with no Content-Length (chunked), to see when they are cut off.
Writes bench/server_memory.json. The limit the issue sets: under 2 GB with 8 clients.

    python bench/server_memory.py
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import select
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from serving import build_archive, start_server


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    b = "chaidermbench"
    return _head(b, name) + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _head(boundary: str, name: str) -> bytes:
    disposition = f'Content-Disposition: form-data; name="image"; filename="{name}"'
    return f"--{boundary}\r\n{disposition}\r\nContent-Type: image/png\r\n\r\n".encode()


def post(port: int, body: bytes, ctype: str) -> tuple[int, float]:
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/api/query", body=body, headers={"Content-Type": ctype})
    status = c.getresponse().status
    c.close()
    return status, time.perf_counter() - t


def stream_without_length(port: int, total: int) -> tuple[int, int]:
    """Send a chunked multipart upload (a valid file part that never ends) until the server answers or
    ``total`` bytes went out; returns (status, bytes sent)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(
        b"POST /api/query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=chaidermbench\r\n\r\n"
    )
    head = _head("chaidermbench", "endless.png")
    s.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
    chunk = b"\0" * 65_536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    status = 0
    try:
        while sent < total:
            if select.select([s], [], [], 0)[0]:
                break  # the server has answered: read it
            s.sendall(frame)
            sent += len(chunk)
    except OSError:
        pass  # the server answered and closed: stop sending
    try:
        s.settimeout(30)
        line = s.recv(4096).split(b"\r\n", 1)[0]
        status = int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, ValueError, IndexError):
        status = 0
    s.close()
    return status, sent


def parallel(n: int, fn, *args) -> list:
    out: list = [None] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(*args))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def big_png(side: int = 7000) -> bytes:
    y, x = np.mgrid[0:side, 0:side]
    a = np.stack([(x * 255 // side), (y * 255 // side), ((x + y) * 127 // side)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/server_memory.json"))
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, ix = build_archive(tmp, n_test=10)
        srv, port = start_server(run, ix, tmp / "f.db")
        try:
            res: dict = {"idle_rss_mb": round(rss_mb(srv.pid), 1)}
            png = big_png()
            body, ctype = multipart(png, "big.png")
            res["png_49mp_bytes"] = len(png)
            t = time.perf_counter()
            answers = parallel(a.clients, post, port, body, ctype)
            res["49mp_pngs"] = {
                "clients": a.clients,
                "statuses": sorted(s for s, _ in answers),
                "seconds": round(time.perf_counter() - t, 1),
                "peak_rss_mb": round(peak_rss_mb(srv.pid), 1),
            }
            print(json.dumps(res), flush=True)
            thin = {}
            for side in (20_000, 200_000):
                buf = io.BytesIO()
                Image.new("L", (1, side)).save(buf, "PNG")
                status, secs = post(port, *multipart(buf.getvalue(), "thin.png"))
                thin[f"1x{side}"] = {"bytes": len(buf.getvalue()), "status": status, "seconds": round(secs, 3)}
            res["thin_pngs"] = thin
            res["thin_pngs"]["peak_rss_mb"] = round(peak_rss_mb(srv.pid), 1)
            streams = parallel(a.clients, stream_without_length, port, 1_000_000_000)
            res["chunked_1gb_without_length"] = {
                "clients": a.clients,
                "statuses": sorted(s for s, _ in streams),
                "max_mb_sent_before_refusal": round(max(b for _, b in streams) / 1e6, 1),
                "peak_rss_mb": round(peak_rss_mb(srv.pid), 1),
            }
            res["peak_rss_mb"] = round(peak_rss_mb(srv.pid), 1)
            res["under_2gb"] = res["peak_rss_mb"] < 2048
        finally:
            srv.terminate()
            srv.wait(timeout=30)
    print(json.dumps(res, indent=2))
    a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
