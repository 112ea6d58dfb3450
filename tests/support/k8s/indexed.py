"""Indexed Jobs as the 1.31 Job controller runs them, and the network their pods see.

All of an Indexed Job's pods start at once, each with its completion index (the
``batch.kubernetes.io/job-completion-index`` label and annotation, ``JOB_COMPLETION_INDEX``
in its env) and hostname ``<job>-<index>``; a pod that fails is replaced for its own
index only, and counted against ``backoffLimitPerIndex`` for that index unless the
``podFailurePolicy`` ignores it (``FailJob`` fails the Job, ``FailIndex`` the index). The
Job completes when every index has succeeded, and fails once an index failed for good
and no pod is left running (``maxFailedIndexes: 0``).

The network: every pod shares this machine's loopback, so each index gets its own
loopback address (``127.0.<n>.<2 + index>`` for its n-th pod, which Linux routes
without configuration; the downward API's ``status.podIP``),
and each pod's container runs in its own UTS and mount namespace, with its hostname and
an ``/etc/hosts`` bind-mounted over the machine's that maps every
``<job>-<i>.<subdomain>[.<ns>.svc.cluster.local]`` to its index's address: what the
headless Service's DNS records give a pod in a real cluster. A process thus sees a
name and an address of its own (torchrun's c10d rendezvous picks the store's host by
them), and a server bound to a port of one pod does not collide with another pod's
bind of the same port on another address.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .objects import now_rfc3339

if TYPE_CHECKING:
    from .jobs import JobController

INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def address(index: int, generation: int = 0) -> str:
    """The loopback address of the pod of ``index``, the ``generation``-th made for it:
    a replacement pod gets an address of its own, as in a cluster."""
    return f"127.0.{generation}.{2 + index}"


def hosts_file(
    job: dict[str, Any], namespace: str, path: Path, generations: dict[int, int]
) -> Path:
    """An ``/etc/hosts`` for a pod of ``job``: this machine's entries, then one line per
    index (the address of its newest pod, ``generations``), the fully qualified name
    first (what ``getfqdn`` answers)."""
    name = job["metadata"]["name"]
    subdomain = job["spec"]["template"]["spec"].get("subdomain")
    lines = [Path("/etc/hosts").read_text().rstrip("\n")]
    for i in range(int(job["spec"].get("completions") or 1)):
        host = f"{name}-{i}"
        names = [host]
        if subdomain:
            names = [f"{host}.{subdomain}.{namespace}.svc.cluster.local", f"{host}.{subdomain}"]
            names.append(host)
        lines.append(f"{address(i, generations.get(i, 0))} {' '.join(names)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def index_of(pod: dict[str, Any]) -> int:
    return int(pod["metadata"].get("labels", {}).get(INDEX_KEY, "0"))


def indexed_template(job: dict[str, Any], index: int) -> dict[str, Any]:
    """What the Job controller adds to an Indexed Job's pod of ``index``."""
    name = job["metadata"]["name"]
    return {
        "labels": {INDEX_KEY: str(index)},
        "annotations": {INDEX_KEY: str(index)},
        "hostname": f"{name}-{index}",
        "env": {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_KEY}']"}},
        },
    }


def sync(ctl: JobController, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
    """One pass of the Job controller over an Indexed Job (see module docstring)."""
    name, spec = job["metadata"]["name"], job["spec"]
    completions = int(spec.get("completions") or 1)
    limit = spec.get("backoffLimitPerIndex")
    phase = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in pods}
    active = [p for p in pods if phase[p["metadata"]["name"]] in (None, "Pending", "Running")]
    done, failed_indexes, counted = set(), set(), 0
    for i in range(completions):
        mine = [p for p in pods if index_of(p) == i]
        if any(phase[p["metadata"]["name"]] == "Succeeded" for p in mine):
            done.add(i)
            continue
        failures = 0
        for p in mine:
            if phase[p["metadata"]["name"]] != "Failed":
                continue
            action, message = ctl._policy(spec, p)
            if action == "FailJob":
                ctl._finish(job, "Failed", "PodFailurePolicy", message)
                return
            if action == "FailIndex":
                failures = 1 + (limit or 0)
            elif action != "Ignore":
                failures += 1
        counted += failures
        if limit is not None and failures > limit:
            failed_indexes.add(i)
    if len(done) == completions:
        ctl._patch_job_status(name, {"succeeded": completions, "active": 0})
        ctl._finish(
            job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
        )
        return
    if failed_indexes and not active:
        ctl._patch_job_status(name, {"failedIndexes": ",".join(map(str, sorted(failed_indexes)))})
        ctl._finish(job, "Failed", "FailedIndexes", "Job has failed indexes")
        return
    if limit is None and counted > spec.get("backoffLimit", 6):
        ctl._finish(
            job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        )
        return
    ctl._patch_job_status(
        name,
        {
            "active": len(active),
            "failed": counted,
            "startTime": job.get("status", {}).get("startTime") or now_rfc3339(),
        },
    )
    running = {index_of(p) for p in active}
    for i in range(completions):
        if i not in done and i not in failed_indexes and i not in running:
            ctl._create_pod(job, index=i)
