"""The test cluster's kubelet builds a container's environment and argv as the real one
does (tests/support/k8s/kubelet.py, runtime.py): envFrom ConfigMaps and Secrets (with
prefix; a missing optional source skipped), the downward API, ``env`` over ``envFrom``,
and ``$(VAR)`` expansion of ``args`` after the image's ENTRYPOINT."""

from __future__ import annotations

import threading

from kubernetes import client

from tests.support.k8s import Cluster, Kubelet
from tests.support.k8s.runtime import container_argv

NS = "vl-test"


def test_env_from_downward_api_and_args_expansion(tmp_path):
    with Cluster() as cluster:
        api = cluster.admin_client()
        core = client.CoreV1Api(api)
        core.create_namespaced_config_map(
            NS,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "visionline-settings", "namespace": NS},
                "data": {"VISIONLINE_STORE": "s3://b/p", "AWS_DEFAULT_REGION": "eu-west-1"},
            },
        )
        kubelet = Kubelet(cluster, NS, api, tmp_path, {}, threading.Event(), [])
        pod = {
            "metadata": {
                "name": "p-1",
                "uid": "u-1",
                "labels": {"batch.kubernetes.io/job-completion-index": "1"},
            }
        }
        container = {
            "name": "trainer",
            "image": "ghcr.io/visionline/visionline-trainer:0.1.0",
            "args": ["torchrun", "--node-rank=$(NODE_RANK)", "$$(NODE_RANK)", "$(UNSET)"],
            "envFrom": [
                {"configMapRef": {"name": "visionline-settings", "optional": True}},
                {"secretRef": {"name": "absent", "optional": True}},
            ],
            "env": [
                {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
                {
                    "name": "NODE_RANK",
                    "valueFrom": {
                        "fieldRef": {
                            "fieldPath": "metadata.labels['batch.kubernetes.io/job-completion-index']"
                        }
                    },
                },
            ],
        }
        env = kubelet._env(container, tmp_path, pod)
    assert env["VISIONLINE_STORE"] == "s3://b/p"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"  # env wins over envFrom
    assert env["NODE_RANK"] == "1"
    # args after the trainer image's ENTRYPOINT: tini, without -g
    assert container_argv(container, env) == [
        "/usr/bin/tini",
        "--",
        "torchrun",
        "--node-rank=1",
        "$(NODE_RANK)",
        "$(UNSET)",
    ]
