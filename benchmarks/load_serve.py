"""Bounded load benchmark of ``catsdogs serve`` (a benchmark, not a test).

Starts ``catsdogs serve RUN`` itself on ``127.0.0.1`` (a free port; nothing else is ever
contacted), waits for ``/healthz``, sends a few warm-up requests, then ``--requests`` POSTs to
``/api/v1/predict`` from ``--concurrency`` threads (keep-alive connections, Python's
``http.client``), stopping early when ``--max-seconds`` have passed. The server is then stopped.

It prints a Markdown table and writes ``benchmarks/results/serve_latest.json`` and
``serve_latest.md``: latency p50/p95/p99/mean/max in milliseconds (per request, from sending it
to reading the whole answer), throughput (requests and photos per second of wall time), error
count (non-200 answers, wrong answers, connection errors) and the settings.

Usage::

    python benchmarks/load_serve.py RUN [--requests 200] [--concurrency 8]
        [--files-per-request 1] [--explain] [--image PHOTO] [--max-seconds 120]
        [--out benchmarks/results/serve_latest.json]

``RUN`` is a trained run folder (``model.keras``). ``--image`` defaults to
``../shared/data/samples/cat.4001.jpg`` when present, else a synthetic 500×375 JPEG. Bounds:
at most 10,000 requests, 64 threads, 1,800 seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "samples" / "cat.4001.jpg"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "serve_latest.json"
HOST = "127.0.0.1"
MAX_REQUESTS, MAX_CONCURRENCY, MAX_SECONDS = 10_000, 64, 1_800


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def default_image() -> tuple[str, bytes]:
    if DEFAULT_IMAGE.is_file():
        return DEFAULT_IMAGE.name, DEFAULT_IMAGE.read_bytes()
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buf, "JPEG")
    return "synthetic.jpg", buf.getvalue()


def multipart(name: str, data: bytes, copies: int) -> tuple[bytes, str]:
    """Encode ``copies`` copies of one file as multipart/form-data field ``files``."""
    boundary = uuid.uuid4().hex
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body = part * copies + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def start_server(run: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "catsdogs.cli", "serve", run,
                                 "--host", HOST, "--port", str(port), "--max-files", "64",
                                 "--max-upload-mb", "64"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"catsdogs serve exited with code {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"server not healthy after {timeout:.0f} s")


class Worker(threading.Thread):
    """Sends requests on one keep-alive connection until the shared budget or time runs out."""

    def __init__(self, port, path, body, content_type, copies, budget, deadline):
        super().__init__(daemon=True)
        self.port, self.path, self.body, self.ctype = port, path, body, content_type
        self.copies, self.budget, self.deadline = copies, budget, deadline
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.status: dict[int, int] = {}

    def run(self):
        conn = None
        while time.monotonic() < self.deadline and self.budget.take():
            if conn is None:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=120)
            t0 = time.perf_counter()
            try:
                conn.request("POST", self.path, body=self.body,
                              headers={"Content-Type": self.ctype})
                resp = conn.getresponse()
                payload = resp.read()
                elapsed = time.perf_counter() - t0
                self.status[resp.status] = self.status.get(resp.status, 0) + 1
                self.latencies.append(elapsed)
                if resp.status != 200:
                    self.errors.append(f"HTTP {resp.status}: {payload[:200]!r}")
                    continue
                results = json.loads(payload)["results"]
                if len(results) != self.copies or any("label" not in r for r in results):
                    self.errors.append(f"unexpected answer: {payload[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                self.latencies.append(time.perf_counter() - t0)
                self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


class Budget:
    def __init__(self, n: int):
        self.left, self.lock = n, threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def markdown(r: dict) -> str:
    lat = r["latency_ms"]
    head = ("| requests | concurrency | photos/request | explain | p50 ms | p95 ms | p99 ms | "
            "mean ms | max ms | requests/s | photos/s | errors |")
    row = (f"| {r['requests_done']} | {r['concurrency']} | {r['files_per_request']} | "
           f"{'yes' if r['explain'] else 'no'} | {lat['p50']:.1f} | {lat['p95']:.1f} | "
           f"{lat['p99']:.1f} | {lat['mean']:.1f} | {lat['max']:.1f} | "
           f"{r['throughput_rps']:.2f} | {r['photos_per_s']:.2f} | {r['errors']} |")
    return "\n".join([head, "|" + "---|" * 12, row])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="trained run folder (model.keras)")
    ap.add_argument("--requests", type=int, default=200, help="requests to send (≤ 10,000)")
    ap.add_argument("--concurrency", type=int, default=8, help="client threads (≤ 64)")
    ap.add_argument("--files-per-request", type=int, default=1, help="photos per request (≤ 64)")
    ap.add_argument("--explain", action="store_true", help="ask for Grad-CAM heatmaps too")
    ap.add_argument("--image", help="photo to send (default: a sample photo or synthetic JPEG)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    ap.add_argument("--max-seconds", type=float, default=120, help="stop after this (≤ 1800)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output (Markdown beside it)")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        ap.error(f"--requests must be 1..{MAX_REQUESTS}")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        ap.error(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if not 1 <= args.files_per_request <= 64:
        ap.error("--files-per-request must be 1..64")
    if not 0 < args.max_seconds <= MAX_SECONDS:
        ap.error(f"--max-seconds must be in (0, {MAX_SECONDS}]")
    if args.image:
        name, data = os.path.basename(args.image), Path(args.image).read_bytes()
    else:
        name, data = default_image()
    body, ctype = multipart(name, data, args.files_per_request)
    path = "/api/v1/predict" + ("?explain=true" if args.explain else "")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://{HOST}:{port}"
    log_path = Path(tempfile.mkdtemp(prefix="catsdogs-bench-")) / "server.log"
    proc = start_server(args.run, port, log_path)
    try:
        startup = wait_healthy(url, proc)
        with urllib.request.urlopen(f"{url}/api/v1/model", timeout=10) as r:
            model = json.load(r)
        for _ in range(args.warmup):
            req = urllib.request.Request(url + path, data=body, headers={"Content-Type": ctype})
            urllib.request.urlopen(req, timeout=120).read()
        budget = Budget(args.requests)
        start = time.monotonic()
        workers = [Worker(port, path, body, ctype, args.files_per_request, budget,
                          start + args.max_seconds) for _ in range(args.concurrency)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=args.max_seconds + 150)
        duration = time.monotonic() - start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    lat = np.array([x for w in workers for x in w.latencies]) * 1000.0
    errors = [e for w in workers for e in w.errors]
    status: dict[str, int] = {}
    for w in workers:
        for code, n in w.status.items():
            status[str(code)] = status.get(str(code), 0) + n
    done = len(lat)
    pct = (lambda q: float(np.percentile(lat, q))) if done else (lambda q: float("nan"))
    result = {
        "benchmark": "serve_load",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run": os.path.abspath(args.run),
        "model": {k: model.get(k) for k in ("preset", "model", "image_size")},
        "requests_planned": args.requests,
        "requests_done": done,
        "stopped_by_time_limit": done < args.requests,
        "concurrency": args.concurrency,
        "files_per_request": args.files_per_request,
        "explain": args.explain,
        "image": {"name": name, "bytes": len(data)},
        "server_startup_s": round(startup, 3),
        "duration_s": round(duration, 3),
        "throughput_rps": done / duration if duration else 0.0,
        "photos_per_s": done * args.files_per_request / duration if duration else 0.0,
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                       "mean": float(lat.mean()) if done else float("nan"),
                       "min": float(lat.min()) if done else float("nan"),
                       "max": float(lat.max()) if done else float("nan")},
        "errors": len(errors),
        "error_examples": errors[:5],
        "status_counts": status,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": model.get("serving_versions"),
    }
    table = markdown(result)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(
        f"# catsdogs serve load benchmark\n\n{result['timestamp']}, run `{args.run}` "
        f"({result['model']['model']}, {result['model']['image_size']} px), "
        f"{os.cpu_count()} CPUs, photo {name} ({len(data):,} bytes).\n\n{table}\n",
        encoding="utf-8")
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
