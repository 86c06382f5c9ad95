"""The service's speed: requests/s and p50/p95 latency for one-face photos at 1, 4 and 16
concurrent clients (loopback only), side by side with the same work in this process (the
service's own Recognition and worker pool, as many client threads as clients, no HTTP), and
the service's overhead as ratios. The ratio issue 22 asks about divides the p95 by one photo
through a plain EmotionRecognizer() one at a time (all cores on each call). Also the time of
one photo on one thread: the CPU a photo costs, which sets the most photos/s all cores can
give, and so the least latency at N clients.

The service is scripts/serve.py in its own process with its defaults (shipped model, one
worker per core, each with a recognizer of its own); each client is a thread here with its own keep-alive connection,
sending multipart uploads like `curl -F file=@photo.jpg` and reading the JSON. Clients and
service share the machine's cores, as they would on one computer.

    python bench/serve.py                       # needs ../shared/photos
    python bench/serve.py --clients 1 4 --requests 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fervgg.common import cpu_description

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "photos"
ONE_FACE = ("obama.jpg", "obama-240p.jpg", "biden.jpg", "obama_partial_face.jpg", "32bit.png")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    kind = "image/png" if name.endswith(".png") else "image/jpeg"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: {kind}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run_level(clients: int, requests: int, call) -> dict:
    """`requests` calls of call(i, local) spread over `clients` threads; latencies and failures."""
    latencies, failures, lock = [], [], threading.Lock()
    local = threading.local()

    def one(i: int) -> None:
        start = time.perf_counter()
        ok = call(i, local)
        elapsed = time.perf_counter() - start
        with lock:
            (latencies if ok else failures).append(elapsed)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": requests, "failed": len(failures), "per_s": requests / wall,
            "p50_ms": 1000 * percentile(latencies, 50) if latencies else float("nan"),
            "p95_ms": 1000 * percentile(latencies, 95) if latencies else float("nan")}


def start_service() -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    for line in proc.stderr:
        found = re.search(r"serving http://([\d.]+):(\d+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
            return proc, found.group(1), int(found.group(2))
    raise SystemExit("error: scripts/serve.py did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level (default: max(20, 4 x clients))")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    photos = [(name, (PHOTOS / name).read_bytes()) for name in ONE_FACE if (PHOTOS / name).is_file()]
    if not photos:
        print(f"error: no photos in {PHOTOS} (../shared/photos)", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fervgg import EmotionRecognizer

    print(f"CPU: {cpu_description()}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    rec = EmotionRecognizer()
    for _, data in photos:  # warm: detector and classifier buffers
        assert len(rec.predict(data)) == 1
    single = [statistics.median(_timed(rec.predict, data) for _ in range(5)) for _, data in photos]
    per_photo_ms = 1000 * statistics.mean(single)
    print(f"in-process EmotionRecognizer.predict, one photo at a time: {per_photo_ms:.0f} ms per photo "
          f"(mean over {len(photos)} photos of the median of 5)", flush=True)

    one_core_ms = 1000 * one_thread_cost(photos)
    cores = os.cpu_count() or 1
    print(f"the same on one thread (detector and classifier): {one_core_ms:.0f} ms per photo, so {cores} cores "
          f"finish at most {1000 * cores / one_core_ms:.1f} photos/s, and 4 photos in flight wait at least "
          f"{4 * one_core_ms / cores:.0f} ms on average ({4 * one_core_ms / cores / per_photo_ms:.2f}x one photo "
          "alone)", flush=True)

    from fervgg.service import Recognition, ServiceSettings

    work = Recognition(ServiceSettings())  # the service's defaults: one recognizer per worker

    def in_process(i: int, local) -> bool:
        (result,) = work.pool.submit(work.predict, [photos[i % len(photos)]], False, True).result()
        return len(result.get("records", [])) == 1

    proc, host, port = start_service()
    bodies = [multipart(name, data) for name, data in photos]

    def service(i: int, local) -> bool:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(host, port, timeout=120)
        body, kind = bodies[i % len(bodies)]
        try:
            local.conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": kind})
            response = local.conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException):
            local.conn.close()
            del local.conn
            return False
        return response.status == 200 and len(json.loads(answer)) == 1

    rows = []
    try:
        for _ in range(len(photos)):  # warm the service the same way
            service(0, threading.local())
        for clients in args.clients:
            n = args.requests or max(20, 4 * clients)
            served = run_level(clients, n, service)
            local = run_level(clients, n, in_process)
            rows.append({"service": served, "in_process": local})
            print(f"{clients:>2} clients: service {served['per_s']:.2f} req/s p50 {served['p50_ms']:.0f} ms "
                  f"p95 {served['p95_ms']:.0f} ms ({served['failed']} failed) | in-process {local['per_s']:.2f}/s "
                  f"p50 {local['p50_ms']:.0f} ms p95 {local['p95_ms']:.0f} ms", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    print("\n| clients | service req/s | p50 ms | p95 ms | failed | in-process photos/s | p50 ms | p95 ms "
          "| p95 / one in-process photo | p95 / in-process p95 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        s, i = row["service"], row["in_process"]
        print(f"| {s['clients']} | {s['per_s']:.2f} | {s['p50_ms']:.0f} | {s['p95_ms']:.0f} | {s['failed']} "
              f"| {i['per_s']:.2f} | {i['p50_ms']:.0f} | {i['p95_ms']:.0f} | {s['p95_ms'] / per_photo_ms:.2f} "
              f"| {s['p95_ms'] / i['p95_ms']:.2f} |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_description(), "per_photo_ms": per_photo_ms, "levels": rows},
                                        indent=1))
    return 0


def one_thread_cost(photos: list[tuple[str, bytes]]) -> float:
    """Seconds per photo of EmotionRecognizer.predict with one LiteRT thread for the detector
    and the classifier: the CPU time a photo costs, which bounds the throughput of all cores."""
    from fervgg import EmotionRecognizer, retinaface

    alone = retinaface.RetinaFace(threads=1)
    shared = retinaface.detector
    retinaface.detector = lambda: alone  # fervgg.faces asks the module for its detector at each photo
    try:
        rec = EmotionRecognizer(threads=1)
        for _, data in photos:
            rec.predict(data)
        return statistics.mean(statistics.median(_timed(rec.predict, data) for _ in range(5)) for _, data in photos)
    finally:
        retinaface.detector = shared


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
