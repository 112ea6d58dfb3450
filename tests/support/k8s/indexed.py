"""Indexed Jobs as the 1.31 Job controller runs them, and the network their pods see.

All of an Indexed Job's pods start at once, each with its completion index (the
``batch.kubernetes.io/job-completion-index`` label and annotation, ``JOB_COMPLETION_INDEX``
in its env) and hostname ``<job>-<index>``; a pod that fails is replaced for its own
index only, and counted against ``backoffLimitPerIndex`` for that index unless the
``podFailurePolicy`` ignores it (``FailJob`` fails the Job, ``FailIndex`` the index). The
Job completes when every index has succeeded, and fails once an index failed for good
and no pod is left running (``maxFailedIndexes: 0``).

The network (``Network``): every pod shares this machine's loopback, so each index gets
its own loopback address (``127.<job>.<n>.<2 + index>`` for its n-th pod, ``<job>``
numbering the Indexed Jobs in the order their first pod was made, 0 for the first;
Linux routes them without configuration; the downward API's ``status.podIP``), and each
pod's container runs in its own UTS and mount namespace, with its hostname and an
``/etc/hosts`` bind-mounted over the machine's that maps every
``<job>-<i>.<subdomain>[.<ns>.svc.cluster.local]`` to its index's address: what the
headless Service's DNS records give a pod in a real cluster. Pods of several Jobs that
share a subdomain (a JobSet's) see each other's names, and every pod's file is
rewritten in place when a pod of its subdomain is made (a replacement's new address),
as DNS answers change. A process thus sees a name and an address of its own (torchrun's
c10d rendezvous picks the store's host by them), and a server bound to a port of one pod
does not collide with another pod's bind of the same port on another address.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .objects import now_rfc3339

if TYPE_CHECKING:
    from .jobs import JobController

INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def address(index: int, generation: int = 0, job: int = 0) -> str:
    """The loopback address of the pod of ``index``, the ``generation``-th made for it,
    of the ``job``-th Indexed Job: a replacement pod gets an address of its own, as in a
    cluster."""
    return f"127.{job}.{generation}.{2 + index}"


class Network:
    """The pods' addresses and their headless Services' DNS records, as ``/etc/hosts``
    files (see module docstring)."""

    def __init__(self, namespace: str, workdir: Path) -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.generations: dict[str, dict[int, int]] = {}  # Job uid -> index -> pods made
        self._jobs: dict[str, int] = {}  # Job uid -> its number in the addresses
        # subdomain (else the Job's name) -> hostname -> address; and the pods' files
        self._records: dict[str, dict[str, str]] = {}
        self._files: dict[str, list[Path]] = {}

    def add_pod(self, job: dict[str, Any], index: int, pod: str) -> tuple[Path, str]:
        """A new pod of ``index`` of ``job``: (its /etc/hosts, its address)."""
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        number = self._jobs.setdefault(uid, len(self._jobs))
        gens = self.generations.setdefault(uid, {})
        gens[index] = gens.get(index, -1) + 1
        subdomain = job["spec"]["template"]["spec"].get("subdomain")
        domain = subdomain or f"job:{name}"
        records = self._records.setdefault(domain, {})
        for i in range(int(job["spec"].get("completions") or 1)):
            records[f"{name}-{i}"] = address(i, gens.get(i, 0), number)
        path = self.workdir / f"{pod}.hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        self._files.setdefault(domain, []).append(path)
        text = self._hosts(records, subdomain)
        for each in self._files[domain]:
            _rewrite(each, text)
        return path, address(index, gens[index], number)

    def _hosts(self, records: dict[str, str], subdomain: str | None) -> str:
        """This machine's entries, then one line per pod name, the fully qualified name
        first (what ``getfqdn`` answers)."""
        lines = [Path("/etc/hosts").read_text().rstrip("\n")]
        for host, ip in records.items():
            names = [host]
            if subdomain:
                fqdn = f"{host}.{subdomain}.{self.namespace}.svc.cluster.local"
                names = [fqdn, f"{host}.{subdomain}", host]
            lines.append(f"{ip} {' '.join(names)}")
        return "\n".join(lines) + "\n"


def _rewrite(path: Path, text: str) -> None:
    """Write ``text`` over the file in place (its inode is bind-mounted into running
    pods): one write over the old bytes, then cut to length, so a reader never finds
    it empty."""
    data = text.encode()
    with path.open("r+b") as f:
        f.write(data)
        f.truncate(len(data))


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
