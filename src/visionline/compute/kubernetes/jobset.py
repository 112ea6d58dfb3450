"""The JobSet (``jobset.x-k8s.io/v1alpha2``) of a multi-node run, for clusters that run
the JobSet controller (``compute.kubernetes.kind: jobset``): one replicated Job, the
Indexed Job ``build_job`` makes (same pod template, same ``podFailurePolicy`` and
``backoffLimitPerIndex``: a lost node's pod is replaced and rejoins the elastic
rendezvous), wrapped so that JobSet provides the headless Service and, when that Job
fails for good, restarts the whole group (``failurePolicy.maxRestarts``). Pure
functions: nothing here talks to a cluster."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from visionline.compute.kubernetes.manifest import build_job, trainer_command
from visionline.kube import DOMAIN, dns_name

if TYPE_CHECKING:
    from visionline.config import PipelineConfig

API_VERSION = "jobset.x-k8s.io/v1alpha2"
REPLICATED_JOB = "node"


# The JobSet webhook refuses a JobSet whose pods' names, ``<jobset>-node-<job index>-<pod
# index>-<5 random>``, would exceed 63 characters: with one Job and up to 128 pods, 17
# characters follow the JobSet's name.
MAX_NAME = 63 - len(f"-{REPLICATED_JOB}-0-127-abcde")


def jobset_name(run_id: str) -> str:
    """The run's JobSet name: as ``job_name`` makes a Job's, short enough for the pod
    names JobSet and the Job controller derive from it."""
    return dns_name("train", run_id, max_len=MAX_NAME)


def rendezvous_host(name: str) -> str:
    """The first pod's DNS name under JobSet: ``<jobset>-<replicatedJob>-<job index>-<pod
    index>.<subdomain>`` (the subdomain is the JobSet's name)."""
    return f"{name}-{REPLICATED_JOB}-0-0.{name}"


def build_jobset(
    cfg: PipelineConfig,
    run_id: str,
    config_uri: str,
    store_uri: str,
    origin: dict[str, str] | None = None,
    owner: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JobSet for one run, as the API's JSON (see module docstring)."""
    k = cfg.compute.kubernetes
    job = build_job(cfg, run_id, config_uri, store_uri, origin, owner)
    name = jobset_name(run_id)
    spec = copy.deepcopy(job["spec"])
    pod = spec["template"]["spec"]
    pod.pop("subdomain", None)  # JobSet sets it (network.subdomain)
    container = pod["containers"][0]
    container["args"] = trainer_command(
        k,
        config_uri,
        store_uri,
        run_id,
        origin,
        rendezvous_host(name),
        cfg.compute.group_timeout_seconds,
    )
    suspend = spec.pop("suspend", None)
    ttl = spec.pop("ttlSecondsAfterFinished", None)
    jobset_spec: dict[str, Any] = {
        "replicatedJobs": [
            {
                "name": REPLICATED_JOB,
                "replicas": 1,
                "template": {"metadata": {"labels": dict(job["metadata"]["labels"])}, "spec": spec},
            }
        ],
        "network": {
            "enableDNSHostnames": True,
            "subdomain": name,
            "publishNotReadyAddresses": True,
        },
        # the Job failing for good (an index out of retries) restarts the whole group;
        # its podFailurePolicy failing it at once (a config error) ends the run
        "failurePolicy": {
            "maxRestarts": k.backoff_limit,
            "rules": [
                {
                    "name": "config-error",
                    "action": "FailJobSet",
                    "onJobFailureReasons": ["PodFailurePolicy"],
                }
            ],
        },
        "successPolicy": {"operator": "All"},
    }
    if suspend:
        jobset_spec["suspend"] = True
    if ttl is not None:
        jobset_spec["ttlSecondsAfterFinished"] = ttl
    metadata = {**copy.deepcopy(job["metadata"]), "name": name}
    metadata["annotations"][f"{DOMAIN}/kind"] = "jobset"
    return {"apiVersion": API_VERSION, "kind": "JobSet", "metadata": metadata, "spec": jobset_spec}
