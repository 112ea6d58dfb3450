"""Serving throughput and latency: our handler against what a user would run instead.

The same model (resnet18, 224x224, 10 classes, the same weights) and the same work per
request (decode the JPEG, resize 256, centre crop 224, ImageNet normalisation, one
forward pass per batch, softmax, top 5 as JSON), one worker per arm batching up to
``--batch-sizes`` requests within 10 ms. Arms, all measured in every round, in random
order within a round:

- ``visionline``: our handler as shipped (``cpu_inference: auto``: the worker times
  eager, conv-bn fused and oneDNN layout at load and keeps the fastest);
- ``visionline_eager``: our handler with ``cpu_inference: eager``: the handler alone;
- ``stock_eager``: TorchServe's built-in ``image_classifier`` handler, no model-config;
- ``stock_compiled``: the same stock handler with the best CPU setting TorchServe 0.12's
  ``model-config.yaml`` offers, ``pt2: {compile: {enable: true, backend: inductor,
  options: {freezing: true}}}`` (``serve_setup.COMPILED_CONFIG`` says why); it compiles
  at the first batch of each size, so it is warmed with a burst of every size 1..batch
  first (``compile_warmup_s``);
- ``litserve``: the same model and weights served by LitServe 0.2.19 with batching
  (``litserve_app.py``, in its own venv: ``make litserve-venv``);
- ``in_process_full``: the ceiling of our request path: decode, preprocessing, the
  forward pass our worker chose, softmax and top-k on the same JPEGs at the same batch
  size, in a process of its own (no HTTP, no TorchServe);
- ``in_process_forward_only``: that forward pass alone on a fixed tensor.

``--runs`` independent runs (default 3), each starting its own servers, each of
``--rounds`` paired rounds at every point (input, batch size, clients). A pair is two
arms' throughputs in the same round of the same run; a comparison reports the minimum
over every pair of every run (``paired_min_over_pairs``, with where it lies), the median
over pairs, and each run's own median with their range across runs. No run is
preferred to another: there is no best-of anywhere.

After the closed-loop rounds of the last run, ``open_loop``: requests arriving as a
Poisson process at 50% and 80% of the arm's closed-loop capacity in that run (its
highest per-point median), ``--open-loop-requests`` (1,000) per point, p50 and p99
latency from each request's scheduled send time (``serve_open_loop``), for
``--open-loop-arms`` (ours and stock_eager by default).

Worker load time is measured one worker at a time: each archive's model scaled to a
second worker on the idle running server, synchronously, then back to one
(``serve_setup.solo_load_seconds``).
Throughput per core divides by the server's pinned cores: where the machine has at
least 2 cores the load generator sits on one core and every server (TorchServe's
frontend and workers, LitServe's processes) and the in-process arms on the others.
Latency percentiles pool every round's requests of every run; a percentile q is
reported only when at least 10 requests lie beyond it.

Inputs: ``photo``, 640x480 JPEGs with photo-like content (about 60-100 KB), and
``small``, 320x320 JPEGs of drawn shapes. Defaults (what ``make bench`` runs): photo
inputs, batch 8, 1, 8 and 32 clients, 3 runs of 2 rounds (at least 40 requests per arm
per round), then the open loop. On 2 cores that is about 15 minutes: per run about 45 s
to start the servers, 40 s of one-at-a-time loads, 100 s of rounds; the open loop about
280 s (2 arms x 2 rates x 1,000 requests at 13-21/s). An estimate from the last full
run's per-request rates and the smoke run's set-up times, not timed end to end. The
compiled arm's graphs are kept in inductor's cache (``.visionline/cache/inductor``):
the first run on a machine compiles two or three graphs (from the third batch size on,
one graph serves any size), 20-60 s each on one busy core, a few minutes more, once. ``--smoke`` runs 1 run (or
``--runs``) of 2 tiny rounds at batch 2 and 50 open-loop requests; it, and any run with
fewer than 3 runs, 2 rounds or 1,000 open-loop requests, is marked ``"smoke": true``.

    python benchmarks/serve.py [--runs 3] [--rounds 2] [--min-requests-per-round 40]
                               [--inputs photo] [--batch-sizes 8] [--concurrency 1,8,32]
                               [--open-loop-requests 1000]
                               [--open-loop-arms visionline,stock_eager] [--no-pin]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import serve_setup
from benchmarks._common import add_common_args, arm_order, write_result
from benchmarks.serve_arms import (
    InProcess,
    Pinning,
    load,
    make_inputs,
    worker_load_seconds,
    worker_plan,
)
from benchmarks.serve_ceiling import FullPathInProcess
from benchmarks.serve_figures import figures
from benchmarks.serve_litserve import LitServeServer
from benchmarks.serve_open_loop import open_loop
from benchmarks.serve_stats import capacity
from tests.support.ports import serve_ports
from visionline.config import ServeConfig
from visionline.serving.torchserve import ServedModel, TorchServe

IMAGENET = serve_setup.IMAGENET  # benchmarks/capture.py reads it from here
# arm -> model name on the TorchServe server ("litserve": its own server; None: in process)
ARMS = {
    "visionline": "ours",
    "visionline_eager": "ours_eager",
    "stock_eager": "stock",
    "stock_compiled": "stock_compiled",
    "litserve": "litserve",
    "in_process_full": None,
    "in_process_forward_only": None,
}
TORCHSERVE_MODELS = ["ours", "ours_eager", "stock", "stock_compiled"]
BATCH_DELAY_MS = 10
COMPILE_TIMEOUT_S = 600  # the compiled worker's first batches compile before answering
# inductor's cache for the compiled arm's workers (they inherit the environment): kept
# between runs and between invocations, as a deployment that restarts keeps it
INDUCTOR_CACHE = Path(__file__).resolve().parents[1] / ".visionline" / "cache" / "inductor"


@dataclass
class Run:
    """One run: per point (input, batch size, clients), arm -> per-round requests/s and
    every request's latency; per batch size what the servers reported at start."""

    rates: dict[tuple, dict[str, list[float]]] = field(default_factory=dict)
    lat: dict[tuple, dict[str, list[float]]] = field(default_factory=dict)
    worker_plans: dict[int, str] = field(default_factory=dict)
    in_process_plans: dict[int, dict] = field(default_factory=dict)
    solo_load: dict[int, dict] = field(default_factory=dict)
    startup_load_s: dict[int, dict] = field(default_factory=dict)
    compile_warmup_s: dict[int, float] = field(default_factory=dict)
    litserve_start_to_ready_s: dict[int, float | None] = field(default_factory=dict)


@dataclass
class Ceilings:
    forward_only: InProcess
    full: FullPathInProcess


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--runs", type=int, default=None, help="independent runs, own servers each (3; smoke 1)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="paired rounds per point per run")
    ap.add_argument("--min-requests-per-round", type=int, default=40)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--inputs", default="photo")
    ap.add_argument("--batch-sizes", default="8")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--open-loop-requests", type=int, default=1000)
    ap.add_argument("--open-loop-arms", default="visionline,stock_eager")
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and server cores")
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args()
    if args.smoke:
        args.runs = args.runs or 1
        args.rounds, args.min_requests_per_round = 2, 4
        args.batch_sizes, args.concurrency, args.open_loop_requests = "2", "1,2", 50
    args.runs = args.runs or 3
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.open_loop_arms = [a for a in args.open_loop_arms.split(",") if a]
    unknown = [a for a in args.open_loop_arms if ARMS.get(a) is None]
    if unknown:
        ap.error(
            f"--open-loop-arms: {unknown} are not served arms ({[a for a in ARMS if ARMS[a]]})"
        )
    if args.runs < 1 or args.rounds < 1:
        ap.error("--runs and --rounds must be at least 1")
    return args


def start_servers(
    tmp: Path, bs: int, arch: serve_setup.Archives, pin: Pinning
) -> tuple[TorchServe, LitServeServer]:
    """A TorchServe serving every archive and a LitServe server, on the server cores."""
    server = TorchServe(
        tmp / f"ts-{bs}",
        ServeConfig(
            model_name="ours",
            batch_size=bs,
            max_batch_delay_ms=BATCH_DELAY_MS,
            **serve_ports(prefix=""),
        ),
    )
    lit = LitServeServer(
        tmp / "litserve", arch.state_path, serve_setup.CLASSES, bs, BATCH_DELAY_MS, pin.server
    )
    # The server and its workers inherit the affinity of the thread that starts them.
    if pin.on:
        os.sched_setaffinity(0, pin.server)
    try:
        served = [
            ServedModel(
                name,
                f"{name}.mar",
                bs,
                BATCH_DELAY_MS,
                1,
                COMPILE_TIMEOUT_S if name == "stock_compiled" else 120,
            )
            for name in TORCHSERVE_MODELS
        ]
        server.start(served, arch.mars)
        lit.start()
    except BaseException:
        lit.stop()
        server.stop(quiet=True)
        raise
    finally:
        if pin.on:
            os.sched_setaffinity(0, pin.client)
    return server, lit


def warm_up(urls: dict[str, str], token: str, images: list[bytes], bs: int) -> float:
    """Every arm a few requests; the compiled arm a burst of every batch size 1..bs, twice,
    so each shape it will see is compiled before any round. Its seconds."""
    for url in urls.values():
        load(url, token, images, 2, 3)
    t = time.perf_counter()
    for _ in range(2):
        for size in range(1, bs + 1):
            load(urls["stock_compiled"], token, images, size, 1)
    return round(time.perf_counter() - t, 1)


def record_start(
    server: TorchServe, lit: LitServeServer, bs: int, ceil: Ceilings, run: Run
) -> None:
    """What our worker chose, load times (all at once at start, then one at a time), and
    the ceilings planned with the same forward pass."""
    run.worker_plans[bs] = worker_plan(server)
    run.startup_load_s[bs] = worker_load_seconds(server)
    run.solo_load[bs] = serve_setup.solo_load_seconds(server, TORCHSERVE_MODELS)
    run.litserve_start_to_ready_s[bs] = lit.start_to_ready_s
    choice = run.worker_plans[bs].split(" ", 1)[0]
    mode = choice if choice in ("eager", "fused", "mkldnn") else "auto"
    run.in_process_plans[bs] = {
        "forward_only": ceil.forward_only.plan(bs, mode),
        "full": ceil.full.plan(bs, mode),
    }
    print(
        f"batch {bs}: our worker's {run.worker_plans[bs]}; load s at start (all at once) "
        f"{run.startup_load_s[bs]}; one at a time {run.solo_load[bs]}; LitServe ready in "
        f"{lit.start_to_ready_s} s; in-process {run.in_process_plans[bs]}",
        flush=True,
    )


def measure_point(
    key: tuple,
    urls: dict[str, str],
    token: str,
    images: list[bytes],
    ceil: Ceilings,
    per_client: int,
    args: argparse.Namespace,
    rng: random.Random,
    run: Run,
) -> None:
    """Every arm, every round, at one (input, batch size, concurrency) point."""
    name, bs, c = key
    run.rates[key] = {arm: [] for arm in ARMS}
    run.lat[key] = {arm: [] for arm in ARMS if ARMS[arm]}
    for r in range(args.rounds):
        for arm in arm_order(ARMS, rng):
            if arm == "in_process_forward_only":
                got = ceil.forward_only.rate(bs, c * per_client)
            elif arm == "in_process_full":
                got = ceil.full.rate(bs, c * per_client)
            else:
                res = load(urls[arm], token, images, c, per_client)
                got = res["requests_per_s"]
                run.lat[key][arm] += res["latencies_ms"]
            run.rates[key][arm].append(got)
        print(
            f"{name} batch {bs} clients {c} round {r + 1}/{args.rounds}: "
            + ", ".join(f"{a} {v[-1]:.1f}/s" for a, v in run.rates[key].items()),
            flush=True,
        )


def measure_open_loop(
    run: Run, urls: dict[str, str], token: str, inputs: dict[str, list[bytes]], args, rng
) -> dict:
    """Each open-loop arm at 50% and 80% of its capacity in this run, in random order."""
    name = next(iter(inputs))
    points = [(arm, f) for arm in args.open_loop_arms for f in (0.5, 0.8)]
    out: dict[str, dict] = {arm: {"capacity_per_s": None} for arm in args.open_loop_arms}
    for i in arm_order(range(len(points)), rng):
        arm, fraction = points[i]
        cap = capacity(run.rates, arm, name)
        res = open_loop(
            urls[arm], token, inputs[name], cap * fraction, args.open_loop_requests, rng
        )
        out[arm]["capacity_per_s"] = round(cap, 2)
        out[arm][f"at_{int(fraction * 100)}pct"] = res
        print(f"open loop {arm} at {fraction:.0%} of {cap:.1f}/s: {res}", flush=True)
    return {"input": name, **out}


def measure_batch_size(
    bs: int,
    tmp: Path,
    arch: serve_setup.Archives,
    ceil: Ceilings,
    inputs: dict[str, list[bytes]],
    args: argparse.Namespace,
    rng: random.Random,
    pin: Pinning,
    run: Run,
    with_open_loop: bool,
) -> dict | None:
    """Fresh servers at batch size ``bs`` for every served arm, every point on them."""
    server, lit = start_servers(tmp, bs, arch, pin)
    try:
        record_start(server, lit, bs, ceil, run)
        token = server.tokens()["inference"]
        urls = {
            arm: f"{server.endpoints.inference}/predictions/{name}"
            for arm, name in ARMS.items()
            if name and arm != "litserve"
        }
        urls["litserve"] = lit.url
        for name, images in inputs.items():
            ceil.full.use_images(images)
            seconds = warm_up(urls, token, images, bs)
            run.compile_warmup_s[bs] = run.compile_warmup_s.get(bs, 0.0) + seconds
            print(f"warm-up on {name}: the compiled arm's took {seconds} s", flush=True)
            for c in args.concurrency:
                per_client = max(args.requests_per_client, -(-args.min_requests_per_round // c))
                measure_point((name, bs, c), urls, token, images, ceil, per_client, args, rng, run)
        if with_open_loop:
            return measure_open_loop(run, urls, token, inputs, args, rng)
        return None
    finally:
        if pin.on:
            os.sched_setaffinity(0, pin.all)
        lit.stop()
        server.stop()


def measure(
    args: argparse.Namespace, inputs: dict[str, list[bytes]], pin: Pinning, rng: random.Random
) -> tuple[list[Run], dict | None]:
    runs: list[Run] = []
    opened = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arch = serve_setup.build_archives(tmp)
        n_classes = len(serve_setup.CLASSES)
        model = arch.cfg.model.arch
        first_images = next(iter(inputs.values()))
        ceil = Ceilings(
            InProcess(model, n_classes, arch.state_path, pin.server),
            FullPathInProcess(
                model, n_classes, arch.serving_json, arch.state_path, first_images, pin.server
            ),
        )
        try:
            for i in range(args.runs):
                print(f"--- run {i + 1}/{args.runs}", flush=True)
                run = Run()
                for j, bs in enumerate(args.batch_sizes):
                    last = i == args.runs - 1 and j == 0
                    got = measure_batch_size(
                        bs, tmp / f"run{i}", arch, ceil, inputs, args, rng, pin, run, last
                    )
                    opened = got or opened
                runs.append(run)
        finally:
            ceil.forward_only.close()
            ceil.full.close()
    return runs, opened


def main() -> None:
    started = time.perf_counter()
    args = parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE))
    inputs = make_inputs(args.inputs.split(","))
    rng = random.Random(args.seed)
    pin = Pinning.of(args.no_pin)
    print(
        f"client cores {sorted(pin.client)}, server cores {sorted(pin.server)}"
        if pin.on
        else f"not pinned ({pin.unpinned()})",
        flush=True,
    )
    preprocess_ms = serve_setup.preprocess_cost(inputs, 2 if args.smoke else 10)
    print("preprocess ms/image", preprocess_ms, flush=True)
    runs, opened = measure(args, inputs, pin, rng)
    result = figures(args, inputs, pin, preprocess_ms, runs, opened, BATCH_DELAY_MS)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    # fewer runs, rounds or open-loop requests than #21 asks: not a figure to cite
    reduced = args.runs < 3 or args.rounds < 2 or args.open_loop_requests < 1000
    result["reduced_run"] = reduced
    write_result("serve", result, args.results_dir, smoke=args.smoke or reduced)
    print(json.dumps({k: result[k] for k in ("paired_min_over_pairs", "wall_s")}))


if __name__ == "__main__":
    main()
