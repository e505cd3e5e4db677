"""What serve/front.py costs a client: the same model behind the front and on TorchServe's own port.

    python bench/front.py [--rounds 5] [--arch resnet18] [--pings 1000] [--requests 96] [--uploads 12]

Two servers run side by side (same model dir: bench/serve.py's "ours", random init, 133 classes, 224 px),
one through serve/front.py (as `localsage serve` and the image's `serve` run it) and one with
TorchServe's frontend on the TCP port itself (LocalServer(front=False)). Each round measures both, in
alternating order, on keep-alive connections:
  * ping: sequential GET /ping (no worker involved: the proxy's cost per request at its plainest)
  * predict: closed-loop POST /predictions/ours of dogImages-sized JPEGs at --concurrency (the real
    load; batched inference dominates)
  * upload: sequential 6 MB bodies that the handler refuses (400 NotAnImage): the cost of relaying bytes
Reported per measure: the median and range over the rounds of front/direct (rates; above 1 is faster
through the front) and of both sides' medians.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
import serve as serve_bench  # noqa: E402 - bench/serve.py: model dirs and JPEGs
from localsage.host import torchserve  # noqa: E402 - after the sys.path insert
from spread import spread_text  # noqa: E402 - bench/spread.py

BODY_BYTES = 6 * 2**20


def connection(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=120)


def pings(port, n):
    conn = connection(port)
    t0 = time.perf_counter()
    for _ in range(n):
        conn.request("GET", "/ping")
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def predicts(port, images, n, concurrency):
    counter, lock, latencies = iter(range(n)), threading.Lock(), []

    def client(_):
        conn = connection(port)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            conn.request("POST", "/predictions/ours", body=images[i % len(images)],
                         headers={"Content-Type": "image/jpeg"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
            with lock:
                latencies.append(time.perf_counter() - t0)
        conn.close()

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return n / (time.perf_counter() - t0), statistics.median(latencies) * 1000


def uploads(port, n, body):
    conn = connection(port)
    t0 = time.perf_counter()
    for _ in range(n):
        conn.request("POST", "/predictions/ours", body=body, headers={"Content-Type": "image/jpeg"})
        r = conn.getresponse()
        r.read()
        assert r.status == 400, r.status
    rate = n * len(body) / 2**20 / (time.perf_counter() - t0)
    conn.close()
    return rate


def measure(port, args, images, body):
    p50 = None
    out = {"ping req/s": pings(port, args.pings)}
    out["predict req/s"], p50 = predicts(port, images, args.requests, args.concurrency)
    out["predict p50 ms"] = p50
    out["upload MB/s"] = uploads(port, args.uploads, body)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--pings", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--uploads", type=int, default=12)
    ap.add_argument("--port", type=int, default=18580)
    args = ap.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="localsage-bench-front-"))
    ours, _, _ = serve_bench.make_model_dirs(root, args.arch, 133, 1)
    images = serve_bench.make_jpegs()
    body = os.urandom(BODY_BYTES)
    servers = {}
    try:
        for i, (side, front) in enumerate((("front", True), ("direct", False))):
            port = args.port + 10 * i
            servers[side] = torchserve.LocalServer({"ours": ours}, port=port, log_path=root / f"{side}.out",
                                                front=front).start(wait_s=300)
        for server in servers.values():  # warm-up
            predicts(server.port, images, 16, args.concurrency)
        print(f"{args.arch} at 224 px, {os.cpu_count()} CPUs, {args.rounds} rounds; per round: {args.pings} pings, "
              f"{args.requests} predictions at concurrency {args.concurrency}, {args.uploads} x 6 MB uploads",
              flush=True)
        rounds = []
        for r in range(args.rounds):
            order = ("front", "direct") if r % 2 == 0 else ("direct", "front")
            got = {side: measure(servers[side].port, args, images, body) for side in order}
            rounds.append(got)
            print(f"round {r + 1}: " + "; ".join(
                f"{k} {got['front'][k]:.1f} vs {got['direct'][k]:.1f}" for k in got["front"]), flush=True)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    print("\n| measure | front / direct, median [range] | front, median | direct, median |")
    print("|---|---|---|---|")
    for key in rounds[0]["front"]:
        ratios = [g["front"][key] / g["direct"][key] for g in rounds]
        print(f"| {key} | {spread_text(ratios, '{:.3f}')} | {statistics.median(g['front'][key] for g in rounds):.1f} | "
              f"{statistics.median(g['direct'][key] for g in rounds):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
