"""Ingest throughput: local store vs S3 (moto server over HTTP), and parallel vs
sequential S3 upload, all in one run on the same generated images.

    python benchmarks/ingest.py [--images 10000] [--compare 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from tests.support.s3 import FaultProxy, free_port
from visionline.data.ingest import ingest
from visionline.data.samples import write_shapes
from visionline.storage import LocalStore, PutItem, S3Store, make_s3_client


def sequential_then_parallel(
    store: S3Store, items: list[PutItem], workers: int
) -> tuple[float, float]:
    """Seconds to upload ``items`` one by one, then with ``workers`` threads (other keys)."""
    t = time.perf_counter()
    store.put_many([PutItem(f"seq/{it.key}", it.data) for it in items], workers=1)
    seq_s = time.perf_counter() - t
    t = time.perf_counter()
    store.put_many([PutItem(f"par/{it.key}", it.data) for it in items], workers=workers)
    return seq_s, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument(
        "--compare", type=int, default=2_000, help="objects in the parallel/sequential comparison"
    )
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--latency-objects", type=int, default=300)
    args = ap.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    # moto logs every request through werkzeug: CPU the emulator shares with the client.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            classes = 10
            print(f"generating {args.images} 64x64 JPEGs ...")
            write_shapes(
                src, classes=classes, per_class=args.images // classes, size=64, fmt="jpg", seed=1
            )

            t = time.perf_counter()
            ingest(
                LocalStore(Path(tmp) / "store"),
                str(src),
                "bench",
                workers=args.workers,
                progress=False,
            )
            local_s = time.perf_counter() - t

            client = make_s3_client(max_pool=max(32, args.workers))
            client.create_bucket(Bucket="bench")
            t = time.perf_counter()
            ingest(
                S3Store("s3://bench/ingest", client=client),
                str(src),
                "bench",
                workers=args.workers,
                progress=False,
            )
            s3_s = time.perf_counter() - t

            files = sorted(src.rglob("*.jpg"))[: args.compare]
            items = [PutItem(key=f"{i:06d}.jpg", data=f.read_bytes()) for i, f in enumerate(files)]
            store = S3Store("s3://bench/compare", client=client)
            seq_s, par_s = sequential_then_parallel(store, items, args.workers)

            # moto is one Python process on the same cores: it, not the network, is the
            # bottleneck above. Real S3 PUTs are latency-bound; a 20 ms round trip shows
            # what the thread pool buys there.
            few = items[: args.latency_objects]
            with FaultProxy(f"http://127.0.0.1:{port}", fail_first=0, delay_s=0.02) as proxy:
                far = S3Store(
                    "s3://bench/rtt", client=make_s3_client(max_pool=64, endpoint_url=proxy.url)
                )
                rtt_seq_s, rtt_par_s = sequential_then_parallel(far, few, args.workers)
    finally:
        server.stop()

    write_result(
        "ingest",
        {
            "images": args.images,
            "local_images_per_s": round(args.images / local_s, 1),
            "s3_images_per_s": round(args.images / s3_s, 1),
            "s3_parallel_vs_sequential": round(seq_s / par_s, 2),
            "compare_objects": len(items),
            "s3_sequential_objects_per_s": round(len(items) / seq_s, 1),
            "s3_parallel_objects_per_s": round(len(items) / par_s, 1),
            "workers": args.workers,
            "s3_parallel_vs_sequential_20ms_rtt": round(rtt_seq_s / rtt_par_s, 2),
            "rtt_objects": len(few),
        },
    )


if __name__ == "__main__":
    main()
