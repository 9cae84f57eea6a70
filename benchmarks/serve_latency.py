"""Latency and throughput of `convlab serve`'s JSON API against a real local server.

Starts `convlab serve RUN` (the page included, as users run it) on a free loopback port,
then: one client sends --requests photos one after another (p50/p95 latency of one photo,
decoding and the model included, as the client sees it); then --clients clients send photos
as fast as they can for --seconds (throughput, p50/p95 under load, errors). Photos are the
first --photos files of a folder of photos (any sizes: they are decoded and resized per
request, as a user's uploads are).

    .venv/bin/python benchmarks/serve_latency.py RUN PHOTOS [--clients 8 --seconds 30]

Prints one JSON object (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, process: subprocess.Popen, timeout: float = 180) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def post(conn: http.client.HTTPConnection, data: bytes) -> tuple[int, float]:
    start = time.perf_counter()
    conn.request("POST", "/predict", body=data,
                 headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    if response.status == 200:
        json.loads(body)
    return response.status, elapsed


def percentiles(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    pick = lambda q: ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))]  # noqa: E731
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(pick(0.95), 1),
            "max_ms": round(ms[-1], 1), "count": len(ms)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("photos", help="a folder of photos (searched recursively for *.jpg)")
    p.add_argument("--photos-count", type=int, default=50, dest="count")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-batch", type=int, default=16, help="convlab serve --max-batch")
    p.add_argument("--out")
    args = p.parse_args()

    photos = [f.read_bytes() for f in sorted(Path(args.photos).rglob("*.jpg"))[:args.count]]
    if not photos:
        raise SystemExit(f"no *.jpg under {args.photos}")
    port = free_port()
    exe = Path(sys.executable).with_name("convlab")
    server = subprocess.Popen([str(exe), "serve", args.run, "--port", str(port),
                               "--max-batch", str(args.max_batch)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        started = wait_up(port, server)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for data in photos[:3]:  # warm-up
            post(conn, data)
        single, errors = [], 0
        for i in range(args.requests):
            status, elapsed = post(conn, photos[i % len(photos)])
            errors += status != 200
            single.append(elapsed)

        loaded, lock, stop = [], threading.Lock(), time.perf_counter() + args.seconds
        failures = []

        def client(k: int):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            i = k
            while time.perf_counter() < stop:
                try:
                    status, elapsed = post(c, photos[i % len(photos)])
                except OSError as err:
                    failures.append(repr(err))
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                with lock:
                    loaded.append(elapsed)
                    if status != 200:
                        failures.append(status)
                i += args.clients

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        begin = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - begin
    finally:
        server.terminate()
        server.wait(30)
    result = {"run": os.path.basename(os.path.normpath(args.run)), "max_batch": args.max_batch,
              "server_start_seconds": round(started, 1), "photos": len(photos),
              "one_client": {**percentiles(single), "errors": errors},
              "concurrent": {"clients": args.clients, "seconds": round(wall, 1),
                             "requests_per_second": round(len(loaded) / wall, 1),
                             **percentiles(loaded), "errors": len(failures)}}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 1 if errors or failures else 0


if __name__ == "__main__":
    sys.exit(main())
