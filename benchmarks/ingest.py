"""Ingest: peak memory as the dataset grows, and S3 upload parallelism under latency.

1. **Memory.** Photo-sized JPEGs (128-256 px, about 10 KB, every one distinct: see
   ``benchmarks/ingest_data.py``; generated once, with progress, and cached under
   ``.visionline/cache/bench-ingest/`` or ``--cache-dir``) are ingested at each of
   ``--sizes`` into a local store by a child process that does nothing else; its peak
   RSS (``ru_maxrss``) is the figure, next to a child that only imports the same
   modules. The growth per image is the least-squares slope of peak RSS on images
   (KiB per image, with R^2 and the largest residual). Ingest spills the manifest rows
   and the scanned files to a temporary SQLite file and streams the bytes through a
   bounded window, so the goal is under 0.3 KB per image (300 MB per million). About
   20 MB of bounded buffers (SQLite's caches, the Parquet writer, the threads'
   allocator arenas) fill up over the first ~5,000 images, so a fit over smaller sizes
   measures them, not the growth: use sizes of 10,000 and more.
2. **S3 sweep.** moto runs in its own process; network latency is added by a proxy in
   another process (each request waits ``latency`` +/- 25 % jitter, uniform), so the
   client's threads, the emulator and the proxy do not share one interpreter's GIL.
   Each arm (workers 1, 4, 16, 32 x latency 0, 20 ms) ingests the same images into its
   own prefix; every round runs all arms in a new random order, and ratios are paired
   within a round. ``s3_parallel_vs_sequential_20ms`` is 16 workers over 1 at 20 ms
   (target: at least 4), as the median of the per-round ratios with their spread.
   Beside it, ``moto_direct_objects_per_s``: what the emulator itself takes with no
   proxy and no latency (PUTs of one image's bytes from 1 and from 16 threads), the
   ceiling any sweep figure is capped by.

    python benchmarks/ingest.py [--sizes 20000 100000 200000] [--sweep-images 300]
        [--rounds 3] [--cache-dir DIR] [--results-dir DIR] [--smoke]

Expected duration on 2 cores: generating the 200,000 JPEGs under a minute (once,
then cached: about 2.8 GB), the memory runs 320,000 ingested images at 650-1,000
images/s (measured at 10,000-100,000: about 8 minutes), the S3 sweep about 2 minutes
with its default 3 rounds (5 before; reduced to keep ``make bench``'s ingest near 11
minutes in all). The store of each memory run and the ingest's spill live in temp
dirs (another 2.8 GB at 200,000) and are deleted after it.

Writes ``benchmarks/results/ingest.json`` and ``ingest_s3_sweep.png``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, add_common_args, results_dir, write_result
from benchmarks.ingest_data import fit_growth, jpeg_source

SCRIPT = str(Path(__file__).resolve())
WORKERS = (1, 4, 16, 32)
LATENCIES_MS = (0, 20)
GOAL_KB_PER_IMAGE = 0.3
DEFAULT_CACHE = REPO / ".visionline" / "cache" / "bench-ingest"
JITTER = 0.25  # of the latency, uniform: a round trip is never exactly the same twice


# --------------------------------------------------------------------------- children
def child_ingest(src: str, store_dir: str) -> None:
    """Ingest ``src`` into a local store and report this process's peak RSS."""
    from visionline.data.ingest import ingest
    from visionline.storage import LocalStore

    t = time.perf_counter()
    res = ingest(LocalStore(store_dir), src, "bench", progress=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"images": res.images, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def child_idle() -> None:
    """The same imports and nothing else: what any ingest costs before the first image."""
    import visionline.data.ingest
    import visionline.storage  # noqa: F401

    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_moto(port: int) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request: CPU the emulator would spend on text nobody reads
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    threading.Event().wait()


def child_proxy(upstream_port: int, port: int, latency_s: float) -> None:
    """Forward HTTP to the emulator, each request delayed by one jittered round trip.

    One persistent upstream connection per client connection, as a real path would
    have: the proxy adds latency, not connection set-up."""
    rng = random.Random(port)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, *a: object) -> None:
            pass

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = f"127.0.0.1:{upstream_port}"
            for attempt in range(2):
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(
                        "127.0.0.1", upstream_port, timeout=60
                    )
                try:
                    self.upstream.request(self.command, self.path, body=body, headers=headers)
                    resp = self.upstream.getresponse()
                    return resp.status, resp.getheaders(), resp.read()
                except (http.client.HTTPException, OSError):
                    self.upstream.close()
                    self.upstream = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if latency_s:
                with lock:
                    wait = latency_s * (1 + rng.uniform(-JITTER, JITTER))
                time.sleep(wait)
            status, headers, data = self._forward(body)
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


# --------------------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(log: Path, *args: str) -> subprocess.Popen:
    # stderr to a file, not a pipe: a chatty helper must never block on a full pipe
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=f, stderr=f)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(proc.log).read_text(errors="replace")[-2000:]  # type: ignore[attr-defined]
            raise RuntimeError(f"helper process exited:\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float], digits: int = 1) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# --------------------------------------------------------------------------- parts
def memory(tmp: Path, cache: Path, sizes: list[int], rounds: int, rng: random.Random) -> dict:
    sources = {n: jpeg_source(cache, n, max(sizes)) for n in sizes}
    idle = run_child("_idle")["peak_rss_mb"]
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for r in range(rounds):
        order = list(sizes)
        rng.shuffle(order)  # no size always runs on a warmer page cache
        for n in order:
            print(f"  ingest {n:,} JPEGs (round {r + 1}/{rounds}) ...", flush=True)
            store = tmp / f"store-{n}-{r}"
            got = run_child("_ingest", str(sources[n]), str(store))
            print(f"    {got['peak_rss_mb']:.0f} MB peak, {got['seconds']:.1f} s", flush=True)
            runs[n].append(got)
            shutil.rmtree(store)
    peaks = {n: max(g["peak_rss_mb"] for g in runs[n]) for n in sizes}
    fit = fit_growth(sizes, [peaks[n] for n in sizes]) if len(sizes) >= 2 else {}
    growth = fit.get("growth_kb_per_image")
    return {
        "import_only_rss_mb": round(idle, 1),
        "memory_rounds": rounds,
        "memory_sizes": sizes,
        "peak_rss_mb": {str(n): round(peaks[n], 1) for n in sizes},
        "peak_rss_growth_mb": round(peaks[max(sizes)] - peaks[min(sizes)], 1),
        "local_images_per_s": {str(n): spread([n / g["seconds"] for g in runs[n]]) for n in sizes},
        "memory_fit": fit,
        "growth_kb_per_image": growth,
        "growth_goal_kb_per_image": GOAL_KB_PER_IMAGE,
        "growth_goal_met": None if growth is None else growth < GOAL_KB_PER_IMAGE,
        "memory_setup": {
            "images": "distinct JPEGs, 128-256 px, quality 85 (benchmarks/ingest_data.py), "
            "10 classes, a local folder into a local store",
            "peak": "ru_maxrss of a child process that only ingests (max over rounds)",
            "fit": "least squares of peak RSS (MiB) on images; growth in KiB per image",
        },
    }


def start_s3(tmp: Path, procs: list[subprocess.Popen]) -> tuple[int, dict[int, str]]:
    """moto in a process of its own, and a latency proxy in front of it per latency
    (each started process goes into ``procs``, for the caller to stop); moto's port and
    latency -> url."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    moto_port = free_port()
    procs.append(spawn(tmp / "moto.log", "_moto", str(moto_port)))
    wait_for_port(moto_port, procs[0])
    proxies = {}
    for lat in LATENCIES_MS:
        port = free_port()
        log = tmp / f"proxy-{lat}.log"
        procs.append(spawn(log, "_proxy", str(moto_port), str(port), str(lat / 1000)))
        wait_for_port(port, procs[-1])
        proxies[lat] = f"http://127.0.0.1:{port}"
    return moto_port, proxies


def moto_direct(port: int, body: bytes, objects: int, rounds: int) -> dict:
    """PUTs straight to moto (no proxy, no latency) from 1 and from 16 threads, rounds
    alternating: objects/s the emulator itself sustains on this machine."""
    from concurrent.futures import ThreadPoolExecutor

    from visionline.storage import make_s3_client

    client = make_s3_client(max_pool=32, endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket="direct")
    got: dict[int, list[float]] = {1: [], 16: []}
    for r in range(rounds + 1):  # the first round warms connections, not measured
        for w in (1, 16) if r % 2 else (16, 1):
            keys = [f"r{r}/w{w}/{i}" for i in range(objects)]
            t = time.perf_counter()
            with ThreadPoolExecutor(w) as pool:
                list(pool.map(lambda k: client.put_object(Bucket="direct", Key=k, Body=body), keys))
            if r:
                got[w].append(objects / (time.perf_counter() - t))
    return {
        "moto_direct_objects_per_s": {f"workers_{w}": spread(v) for w, v in got.items()},
        "moto_direct_setup": f"{objects} PUTs of {len(body)} bytes per arm and round, "
        f"{rounds} rounds, boto3 straight to moto (no proxy, no latency)",
    }


def sweep_rounds(
    proxies: dict[int, str], src: Path, warm: Path, rounds: int, rng: random.Random
) -> dict[tuple[int, int], list[float]]:
    """Every arm once on ``warm`` (not measured), then ``rounds`` rounds of every arm in
    random order on ``src``: (latency, workers) -> images/s per round."""
    # imported here, not at the top: this script is also the memory children's entry
    # point, and they must load only the modules they measure
    from visionline.data.ingest import ingest
    from visionline.storage import S3Store, make_s3_client

    make_s3_client(endpoint_url=proxies[0]).create_bucket(Bucket="bench")
    arms = [(lat, w) for lat in LATENCIES_MS for w in WORKERS]
    clients = {
        (lat, w): make_s3_client(max_pool=max(10, w), endpoint_url=proxies[lat]) for lat, w in arms
    }

    def one(tag: str, lat: int, w: int, folder: Path) -> float:
        store = S3Store(f"s3://bench/{tag}/{lat}ms-w{w}", client=clients[(lat, w)])
        t = time.perf_counter()
        res = ingest(store, str(folder), "sweep", workers=w, progress=False)
        return res.images / (time.perf_counter() - t)

    for lat, w in arms:  # connection pools and code paths warm, not measured
        one("warm", lat, w, warm)
    per_arm: dict[tuple[int, int], list[float]] = {a: [] for a in arms}
    for r in range(rounds):
        order = list(arms)
        rng.shuffle(order)
        for lat, w in order:
            per_arm[(lat, w)].append(one(f"r{r}", lat, w, src))
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{w}w@{lat}ms {per_arm[(lat, w)][-1]:.0f}/s" for lat, w in arms),
            flush=True,
        )
    return per_arm


def sweep_figures(
    per_arm: dict[tuple[int, int], list[float]], images: int, rounds: int, out_dir: Path
) -> dict:
    """Each arm's throughput, the paired 16-over-1 worker ratios, and the plot."""

    def paired(lat: int) -> list[float]:
        return [a / b for a, b in zip(per_arm[(lat, 16)], per_arm[(lat, 1)], strict=True)]

    points = [
        {
            "latency_ms": lat,
            "workers": w,
            "objects_per_s": spread(per_arm[(lat, w)]),
            "rounds": [round(v, 1) for v in per_arm[(lat, w)]],
        }
        for lat, w in per_arm
    ]
    r20, r0 = paired(20), paired(0)
    plot_sweep(points, out_dir)
    return {
        "s3_sweep": points,
        "s3_parallel_vs_sequential_20ms": round(statistics.median(r20), 2),
        "s3_parallel_vs_sequential_20ms_spread": spread(r20, 2),
        "s3_parallel_vs_sequential_0ms": spread(r0, 2),
        "s3_sweep_setup": {
            "objects_per_ingest": images,
            "rounds": rounds,
            "jitter": f"+/- {int(JITTER * 100)} % of the latency, uniform, per request",
            "processes": "moto server, latency proxy (one per latency) and client each "
            "in their own process",
            "objects_per_s": "images / wall time of the whole ingest() call (scan, "
            "inspect, upload, manifest), workers threads for both phases",
        },
    }


def s3_sweep(
    tmp: Path, images: int, rounds: int, rng: random.Random, body: bytes, out_dir: Path
) -> dict:
    from visionline.data.samples import write_shapes

    src = tmp / "sweep"
    write_shapes(src, classes=10, per_class=images // 10, size=16, fmt="png", seed=7)
    warm = tmp / "warm"
    write_shapes(warm, classes=2, per_class=10, size=16, fmt="png", seed=8)
    procs: list[subprocess.Popen] = []
    try:
        moto_port, proxies = start_s3(tmp, procs)
        direct = moto_direct(moto_port, body, max(50, images), max(2, rounds))
        per_arm = sweep_rounds(proxies, src, warm, rounds, rng)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    return sweep_figures(per_arm, images, rounds, out_dir) | direct


def plot_sweep(points: list[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for lat in LATENCIES_MS:
        pts = [p for p in points if p["latency_ms"] == lat]
        xs = [p["workers"] for p in pts]
        med = [p["objects_per_s"]["median"] for p in pts]
        err = [
            [m - p["objects_per_s"]["min"] for m, p in zip(med, pts, strict=True)],
            [p["objects_per_s"]["max"] - m for m, p in zip(med, pts, strict=True)],
        ]
        ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=f"{lat} ms latency")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(WORKERS), [str(w) for w in WORKERS])
    ax.set_xlabel("ingest workers")
    ax.set_ylabel("images / s (median, min-max over rounds)")
    ax.set_title("Ingest into S3 (moto) through a latency proxy")
    ax.legend()
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "ingest_s3_sweep.png", dpi=120)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        mode, rest = sys.argv[1], sys.argv[2:]
        if mode == "_ingest":
            child_ingest(*rest)
        elif mode == "_idle":
            child_idle()
        elif mode == "_moto":
            child_moto(int(rest[0]))
        elif mode == "_proxy":
            child_proxy(int(rest[0]), int(rest[1]), float(rest[2]))
        else:
            raise SystemExit(f"unknown helper mode {mode}")
        return

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 200_000])
    ap.add_argument("--memory-rounds", type=int, default=1)
    ap.add_argument("--sweep-images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="order of arms within rounds")
    ap.add_argument("--cache-dir", default=None, help=f"generated JPEGs (default {DEFAULT_CACHE})")
    add_common_args(ap)
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.sweep_images, args.rounds = [100, 200, 300], 20, 1

    rng = random.Random(args.seed)
    out_dir = results_dir(args.results_dir)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        cache = Path(args.cache_dir or (Path(tmp) / "cache" if args.smoke else DEFAULT_CACHE))
        sizes = sorted(set(args.sizes))
        figures = memory(Path(tmp), cache, sizes, args.memory_rounds, rng)
        figures["jpeg_cache"] = str(cache)
        print("S3 sweep ...", flush=True)
        body = next(jpeg_source(cache, sizes[0], sizes[-1]).glob("c0/*.jpg")).read_bytes()
        figures |= s3_sweep(Path(tmp), args.sweep_images, args.rounds, rng, body, out_dir)
    load_end = os.getloadavg()
    figures["bench_seconds"] = round(time.perf_counter() - t0, 1)
    figures["load_average_1m"] = {"start": round(load_start[0], 2), "end": round(load_end[0], 2)}
    cpus = os.cpu_count() or 1
    if max(load_start[0], load_end[0]) > cpus:
        figures["note"] = (
            f"load average up to {max(load_start[0], load_end[0]):.1f} on {cpus} CPUs while "
            "this ran (this benchmark's own upload threads, moto and the proxy count in "
            "it, as do other jobs): throughput figures are noisy, the paired ratios and "
            "the memory figures less so"
        )
    write_result("ingest", figures, args.results_dir, smoke=args.smoke)


if __name__ == "__main__":
    main()
