"""A survivor gives up on a peer that stopped answering within ``compute.group_timeout_seconds``
(issue 18, defect 2): the process group ``init_distributed`` makes bounds every collective,
instead of gloo's 30 min (NCCL's 10) of holding the device while waiting on a node that
is gone. Two real gloo processes: rank 1 freezes (a node lost without a word, as a
vanished VM: no SIGTERM, no closed connection), rank 0's next all-reduce must fail
within the bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.support.s3 import free_port

TIMEOUT = 3

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import torch, torch.distributed as dist
    from visionline.training.devices import init_distributed

    init_distributed("cpu", float(sys.argv[1]))
    if dist.get_rank() == 1:
        time.sleep(120)  # frozen: holds its sockets open, answers nothing
    start = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
        print(json.dumps({"error": None}))
    except Exception as e:
        print(json.dumps({"error": type(e).__name__, "after": time.monotonic() - start}))
    sys.stdout.flush()
    os._exit(0)
    """
)


def test_a_collective_with_a_frozen_peer_fails_within_the_group_timeout(tmp_path):
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": "0",
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(TIMEOUT)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        # before the fix: gloo's default timeout (30 min), so no answer in a minute
        out, err = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["error"], (out, err[-2000:])
    assert TIMEOUT - 0.5 <= result["after"] < TIMEOUT + 5, result
