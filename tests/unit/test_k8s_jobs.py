"""The training Job as built from config: every object validates against the real 1.31
schemas (strict), carries the failure policy, GPU request and labels, and no secret."""

from __future__ import annotations

import json

import pytest

from tests.support.k8s import validate
from tests.support.k8s.job_config import RUN, STORE, URI
from tests.support.k8s.job_config import kube_config as _cfg
from visionline.compute.kubernetes import build_manifests, job_name, pod_problem
from visionline.errors import EXIT_CONFIG_ERROR, ConfigError


def _container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_single_gpu_job_has_request_policy_labels_and_validates():
    cfg = _cfg(
        gpus=1,
        queue_name="gpu-queue",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    [job] = build_manifests(cfg, RUN, URI, STORE, origin={"flow_run": "abc"})
    validate(job)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    c = _container(job)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "command" not in c  # args: the image's ENTRYPOINT (tini) stays PID 1
    assert c["args"] == [
        "python",
        "-m",
        "visionline.training",
        "--config",
        URI,
        "--run-id",
        RUN,
        "--store",
        STORE,
        "--origin",
        "flow_run=abc",
    ]
    assert pod["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["backoffLimit"] == cfg.compute.kubernetes.backoff_limit
    assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {
        "containerName": c["name"],
        "operator": "In",
        "values": [EXIT_CONFIG_ERROR],
    }
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "visionline"
    assert labels["app.kubernetes.io/component"] == "training"
    assert labels["visionline.io/run-id"] == RUN
    assert labels["visionline.io/model"] == "digits"
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue" and spec["suspend"] is True
    assert job["spec"]["template"]["metadata"]["labels"]["visionline.io/run-id"] == RUN
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["serviceAccountName"] == "visionline-trainer"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert (
        pod["terminationGracePeriodSeconds"]
        == cfg.compute.kubernetes.termination_grace_period_seconds
    )


def test_credentials_are_referenced_never_copied(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALLOOKINGKEY01")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-that-must-not-leak")
    cfg = _cfg(s3_secret="team-s3", env={"AWS_ENDPOINT_URL": "https://minio.example:9000"})
    [job] = build_manifests(cfg, RUN, URI, STORE)
    text = json.dumps(job)
    assert "s3cr3t-value-that-must-not-leak" not in text and "AKIAREALLOOKINGKEY01" not in text
    env = {e["name"]: e for e in _container(job)["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "team-s3", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio.example:9000"
    # a secret written as a plain value is refused at config load, naming the key
    with pytest.raises(ConfigError, match=r"compute\.kubernetes.*AWS_SECRET_ACCESS_KEY.*Secret"):
        _cfg(env={"AWS_SECRET_ACCESS_KEY": "x"})


def test_several_gpus_run_torchrun_with_one_process_each():
    [job] = build_manifests(_cfg(gpus=4), RUN, URI, STORE)
    validate(job)
    cmd = _container(job)["args"]
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in cmd and "--standalone" in cmd
    # the agent gives its workers the pod's grace period (120 s) less its margin, not 30 s
    assert "--shutdown-timeout=110" in cmd
    assert cmd[cmd.index("-m", 3) : cmd.index("-m", 3) + 2] == ["-m", "visionline.training"]
    assert _container(job)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    with pytest.raises(ConfigError, match="nproc_per_node 2 must equal gpus 4"):
        _cfg(gpus=4, nproc_per_node=2)


def test_multi_node_is_an_indexed_job_with_a_headless_service():
    svc, job = build_manifests(_cfg(gpus=8, nodes=2), RUN, URI, STORE)
    validate(svc)
    validate(job)
    name = job_name(RUN)
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == name
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["subdomain"] == name
    cmd = _container(job)["args"]
    assert "--shutdown-timeout=110" in cmd
    assert "--nnodes=2" in cmd and "--nproc-per-node=8" in cmd
    # elastic: ranks come from the rendezvous, so a replaced pod rejoins the group
    assert not any(a.startswith(("--node-rank", "--master-addr")) for a in cmd)
    assert f"--rdzv-endpoint={name}-0.{name}:29500" in cmd and "--rdzv-backend=c10d" in cmd
    assert f"--rdzv-id={RUN}" in cmd and "--max-restarts=3" in cmd
    assert "--rdzv-conf=join_timeout=300,keep_alive_interval=1,keep_alive_max_attempt=3" in cmd
    assert "--local-addr=$(POD_IP)" in cmd
    spec = job["spec"]
    # retries per node, none spent on a disruption; no Job-wide limit
    assert spec["backoffLimitPerIndex"] == 3 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec


def test_job_names_are_dns_labels_and_distinct():
    a = job_name("Digits_CNN.v2-" + "x" * 120)
    b = job_name("digits-cnn-v2-" + "x" * 120)
    assert a != b
    for n in (a, b, job_name(RUN)):
        assert len(n) <= 52 and n == n.lower() and n[0].isalnum() and n[-1].isalnum()


def _pod(phase="Failed", **status):
    return {"metadata": {"name": "p"}, "status": {"phase": phase, **status}}


def _terminated(code, reason="Error"):
    return {
        "containerStatuses": [
            {"name": "trainer", "state": {"terminated": {"exitCode": code, "reason": reason}}}
        ]
    }


@pytest.mark.parametrize(
    ("pod", "kind", "words"),
    [
        (
            _pod(**_terminated(137, "OOMKilled")),
            "OOMKilled",
            ["out of memory", "limits.memory", "8Gi"],
        ),
        (_pod(**_terminated(EXIT_CONFIG_ERROR)), "ConfigError", ["configuration", "exit 78"]),
        (
            _pod(reason="Evicted", message="The node was low on resource: memory."),
            "Evicted",
            ["evicted", "low on resource"],
        ),
        (
            _pod(
                "Pending",
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ],
            ),
            "Unschedulable",
            ["cannot be scheduled", "Insufficient nvidia.com/gpu", "GPU nodes"],
        ),
        (
            _pod(
                "Pending",
                containerStatuses=[
                    {
                        "name": "trainer",
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": "Back-off pulling image",
                            }
                        },
                    }
                ],
            ),
            "ImagePull",
            ["cannot pull image", "ImagePullBackOff", "compute.kubernetes.image"],
        ),
    ],
)
def test_pod_problems_in_operator_words(pod, kind, words):
    k = _cfg(gpus=1).compute.kubernetes
    got_kind, message = pod_problem(pod, k)
    assert got_kind == kind
    for w in words:
        assert w in message
