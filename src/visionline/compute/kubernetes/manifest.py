"""The objects of one training run, as the API's JSON: the ``batch/v1`` Job (and, for more
than one node, the headless Service its pods find each other through), built from
``compute.kubernetes``. Pure functions: nothing here talks to a cluster."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from visionline.compute import trainer_args
from visionline.errors import EXIT_CONFIG_ERROR
from visionline.kube import (
    DOMAIN,
    app_labels,
    container_security_context,
    dns_name,
    label_value,
    pod_security_context,
    s3_env,
    tolerations,
)

if TYPE_CHECKING:
    from visionline.config import KubernetesComputeConfig, PipelineConfig

CONTAINER = "trainer"
WORKDIR = "/work"
# Under torchrun the agent gets the pod's SIGTERM and gives its workers this much less
# than the pod's grace period (torchrun's own default is 30 s), so that it can still
# report their exit before the kubelet's SIGKILL.
AGENT_MARGIN_SECONDS = 10
GPU_RESOURCE = "nvidia.com/gpu"


def job_name(run_id: str) -> str:
    return dns_name("train", run_id)


def trainer_command(
    k: KubernetesComputeConfig,
    config_uri: str,
    store_uri: str,
    run_id: str,
    origin: dict[str, str] | None = None,
    rendezvous_host: str | None = None,
    group_timeout: int = 300,
) -> list[str]:
    """The trainer's ``args`` (never ``command``: the image's ENTRYPOINT, tini, stays PID
    1 and passes SIGTERM to this process, whose handler checkpoints)."""
    entry = ["-m", "visionline.training", *trainer_args(config_uri, run_id, store_uri, origin)]
    nproc = k.processes_per_node
    # torchrun's agent passes SIGTERM on to its workers and waits this long for them
    shutdown = f"--shutdown-timeout={worker_grace_seconds(k)}"
    if k.nodes > 1:
        return [
            "python",
            "-m",
            "torch.distributed.run",
            shutdown,
            *elastic_args(k, rendezvous_host, run_id, group_timeout),
            f"--nproc-per-node={nproc}",
            *entry,
        ]
    if nproc > 1:
        return [
            "python",
            "-m",
            "torch.distributed.run",
            shutdown,
            "--standalone",
            "--nnodes=1",
            f"--nproc-per-node={nproc}",
            *entry,
        ]
    return ["python", *entry]


def elastic_args(
    k: KubernetesComputeConfig, rendezvous_host: str | None, run_id: str, group_timeout: int
) -> list[str]:
    """torchrun's elastic rendezvous for ``k.nodes`` pods: every node's agent meets at
    the c10d store on the first pod (``rendezvous_host``); when a node is lost, the
    survivors' workers stop (checkpointed, or failed by the group timeout), their agents
    keep the pod and rendezvous again, and the lost node's replacement pod joins that
    round: the whole group restarts from the last checkpoint, up to ``max_restarts``
    times. No ``--node-rank``: the rendezvous assigns ranks, so a replacement needs none.
    ``join_timeout``: how long survivors wait for the replacement before their pod fails."""
    timeout = group_timeout
    return [
        f"--nnodes={k.nodes}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_host}:{k.rendezvous_port}",
        f"--rdzv-id={run_id}",
        # a lost node's agent leaves no word: its heartbeats stop, and it stays in the
        # rendezvous (holding up the next round) until they are this long overdue
        f"--rdzv-conf=join_timeout={timeout},keep_alive_interval=1,keep_alive_max_attempt=3",
        f"--max-restarts={k.max_restarts}",
        # the agent's identity in the rendezvous, and rank 0's address for the workers:
        # the pod's own IP, as a replacement pod has the same hostname and, in its own
        # PID namespace, often the same PID, which would make it the lost node's twin
        "--local-addr=$(POD_IP)",
    ]


def worker_grace_seconds(k: KubernetesComputeConfig) -> int:
    """How long torchrun's workers get from SIGTERM to SIGKILL: the pod's grace period
    less the agent's margin."""
    return max(1, k.termination_grace_period_seconds - AGENT_MARGIN_SECONDS)


def run_labels(cfg: PipelineConfig, run_id: str) -> dict[str, str]:
    """Labels on every object of a run, so kubectl finds a run by id, model or dataset."""
    return {
        **app_labels("training"),
        f"{DOMAIN}/run-id": label_value(run_id),
        f"{DOMAIN}/model": label_value(cfg.serve.model_name),
        f"{DOMAIN}/arch": label_value(cfg.model.arch),
        f"{DOMAIN}/dataset": label_value(cfg.data.dataset),
    }


def _job_annotations(
    run_id: str, config_uri: str, store_uri: str, origin: dict[str, str] | None
) -> dict[str, str]:
    annotations = {
        f"{DOMAIN}/run-id": run_id,
        f"{DOMAIN}/config": config_uri,
        f"{DOMAIN}/store": store_uri,
    }
    if origin:
        annotations[f"{DOMAIN}/origin"] = json.dumps(origin, sort_keys=True)
    return annotations


def _trainer_env(k: KubernetesComputeConfig, run_id: str) -> list[dict[str, Any]]:
    group = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # torch's shared rendezvous store publishes rank 0's address in the first round
        # only: a replacement pod joining a later round would wait for it forever
        {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"},
    ]
    return [
        *(group if k.nodes > 1 else []),
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": WORKDIR},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "VISIONLINE_RUN_ID", "value": run_id},
        *s3_env(k.s3_secret, k.env),
    ]


def _scratch(k: KubernetesComputeConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volume mounts, volumes): the writable directories of a read-only root filesystem."""
    mounts = [
        {"name": "work", "mountPath": WORKDIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if k.shm_size:
        # DataLoader workers pass batches through /dev/shm; the runtime's default is 64 MiB.
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k.shm_size}})
    return mounts, volumes


def trainer_container(
    k: KubernetesComputeConfig,
    command: list[str],
    run_id: str,
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    limits = dict(k.resources.limits)
    requests = dict(k.resources.requests)
    if k.gpus:
        limits[GPU_RESOURCE] = str(k.gpus)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        # args, not command: the image's ENTRYPOINT (tini) stays PID 1
        "args": command,
        "workingDir": WORKDIR,
        "env": _trainer_env(k, run_id),
        "resources": {"requests": requests, "limits": limits},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if k.settings_config_map:
        # what every visionline pod reads: VISIONLINE_STORE, AWS_DEFAULT_REGION, ...
        container["envFrom"] = [{"configMapRef": {"name": k.settings_config_map, "optional": True}}]
    if k.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": k.rendezvous_port}]
    return container


def trainer_pod_spec(
    k: KubernetesComputeConfig,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    service: str | None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": k.service_account,
        # the trainer never calls the Kubernetes API
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": k.termination_grace_period_seconds,
        "securityContext": pod_security_context(k.run_as_user),
        "containers": [container],
        "volumes": volumes,
    }
    if k.node_selector:
        pod_spec["nodeSelector"] = dict(k.node_selector)
    tolerate = tolerations(k.tolerations)
    if k.gpus and not any(t.get("key") == GPU_RESOURCE for t in tolerate):
        # GPU nodes are often tainted so (GKE always): the GPU limit picks the node, no
        # node label does (nvidia.com/gpu.present exists only with GPU Feature Discovery)
        tolerate.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerate:
        pod_spec["tolerations"] = tolerate
    if k.priority_class:
        pod_spec["priorityClassName"] = k.priority_class
    if k.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in k.image_pull_secrets]
    if service:
        pod_spec["subdomain"] = service
    return pod_spec


def pod_failure_policy() -> dict[str, Any]:
    """A configuration error fails the Job at once (a retry cannot fix it); a disrupted
    pod (preemption, eviction, drain) is not counted: its replacement resumes (for more
    than one node: rejoins the group's rendezvous, and the whole group resumes)."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [EXIT_CONFIG_ERROR],
                },
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def job_spec(k: KubernetesComputeConfig, template: dict[str, Any]) -> dict[str, Any]:
    """One node: ``backoffLimit`` retries of the one pod. More than one: an Indexed Job
    whose retries are counted per node (``backoffLimitPerIndex``), so one flaky node
    cannot use up the others' retries, and ``maxFailedIndexes: 0``: a node out of
    retries fails the run (the group cannot train without it)."""
    spec: dict[str, Any] = {
        "activeDeadlineSeconds": k.active_deadline_seconds,
        # a replacement starts only once the old pod has fully terminated, so two pods of
        # a run never write the same checkpoints
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "template": template,
    }
    if k.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = k.ttl_seconds_after_finished
    if k.nodes > 1:
        spec.update(
            completions=k.nodes,
            parallelism=k.nodes,
            completionMode="Indexed",
            backoffLimitPerIndex=k.backoff_limit,
            maxFailedIndexes=0,
        )
    else:
        spec.update(backoffLimit=k.backoff_limit, completions=1, parallelism=1)
    if k.queue_name:
        spec["suspend"] = True  # Kueue admits (unsuspends) it when the queue has quota
    return spec


def build_job(
    cfg: PipelineConfig,
    run_id: str,
    config_uri: str,
    store_uri: str,
    origin: dict[str, str] | None = None,
    owner: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Job for one run, as the API's JSON; ``owner`` (``owner.flow_run_owner``):
    the flow run's Job or pod, whose deletion garbage-collects this Job."""
    k = cfg.compute.kubernetes
    name = job_name(run_id)
    labels = run_labels(cfg, run_id)
    job_labels = dict(labels)
    if k.queue_name:
        job_labels["kueue.x-k8s.io/queue-name"] = k.queue_name
    service = name if k.nodes > 1 else None
    rendezvous = f"{name}-0.{service}" if service else None
    mounts, volumes = _scratch(k)
    command = trainer_command(
        k, config_uri, store_uri, run_id, origin, rendezvous, cfg.compute.group_timeout_seconds
    )
    container = trainer_container(k, command, run_id, mounts)
    template = {
        "metadata": {"labels": labels, "annotations": {f"{DOMAIN}/run-id": run_id}},
        "spec": trainer_pod_spec(k, container, volumes, service),
    }
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": k.namespace,
        "labels": job_labels,
        "annotations": _job_annotations(run_id, config_uri, store_uri, origin),
    }
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": job_spec(k, template),
    }


def build_rendezvous_service(cfg: PipelineConfig, run_id: str) -> dict[str, Any]:
    """Headless Service giving each pod of an Indexed Job a DNS name
    (``<job>-<index>.<service>``); torchrun's rank 0 listens on its rendezvous port."""
    name = job_name(run_id)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": cfg.compute.kubernetes.namespace,
            "labels": run_labels(cfg, run_id),
            "annotations": {f"{DOMAIN}/run-id": run_id},
        },
        "spec": {
            "clusterIP": "None",
            # ranks must resolve each other before any of them is Ready
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": name},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": cfg.compute.kubernetes.rendezvous_port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_manifests(
    cfg: PipelineConfig,
    run_id: str,
    config_uri: str,
    store_uri: str,
    origin: dict[str, str] | None = None,
    owner: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every object ``submit`` creates for a run, in creation order (the Job last)."""
    objects = []
    if cfg.compute.kubernetes.nodes > 1:
        objects.append(build_rendezvous_service(cfg, run_id))
    objects.append(build_job(cfg, run_id, config_uri, store_uri, origin, owner))
    return objects


def owned_by_job(obj: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with an ownerReference to the created ``job`` (its uid is the server's),
    so the garbage collector deletes it with the Job. No ``blockOwnerDeletion``: the
    Job's deletion need not wait for it, and setting it would need a permission on the
    Job's finalizers where the OwnerReferencesPermissionEnforcement plugin is on."""
    meta = job["metadata"]
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [ref]}}
