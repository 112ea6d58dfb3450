"""``compute.kubernetes.kind: jobset`` (issue 18, defect 2): the JobSet of a multi-node run
carries the same Indexed Job as ``kind: job`` (same pod template, failure policy and
per-index retries) under the elastic rendezvous, at JobSet's pod names.

JobSet is a CRD, absent from the 1.31 schemas: the JobSet is checked against the schema
below, written from the JobSet CRD (jobset.x-k8s.io/v1alpha2, the fields used here, with
their types and enums), strict (no field it does not know); its Job template is checked
against the real batch/v1 Job schema."""

from __future__ import annotations

import jsonschema
import pytest

from tests.conftest import REPO
from tests.support.k8s import validate
from visionline.compute.kubernetes import build_manifests
from visionline.compute.kubernetes.jobset import build_jobset, rendezvous_host
from visionline.config import load_config

RUN = "digits-cnn-0123456789ab-deadbeef"
URI = "s3://bucket/artifacts/configs/abc.yaml"
STORE = "s3://bucket/artifacts"

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_FAILURE_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "action"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-zA-Z]([-_a-zA-Z0-9]*[a-zA-Z0-9])?$"},
        "action": {"enum": ["FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"]},
        "onJobFailureReasons": {
            "type": "array",
            "items": {
                "enum": [
                    "BackoffLimitExceeded",
                    "DeadlineExceeded",
                    "PodFailurePolicy",
                    "MaxFailedIndexesExceeded",
                    "FailedIndexes",
                ]
            },
        },
        "targetReplicatedJobs": {"type": "array", "items": {"type": "string"}},
    },
}
JOBSET_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "jobset.x-k8s.io/v1alpha2"},
        "kind": {"const": "JobSet"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "maxLength": 63},
                "namespace": {"type": "string"},
                "labels": _STR_MAP,
                "annotations": _STR_MAP,
                "ownerReferences": {"type": "array"},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["replicatedJobs"],
            "properties": {
                "replicatedJobs": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "template"],
                        "properties": {
                            "name": {"type": "string"},
                            "replicas": {"type": "integer", "minimum": 0},
                            "template": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["spec"],
                                "properties": {
                                    "metadata": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {"labels": _STR_MAP, "annotations": _STR_MAP},
                                    },
                                    "spec": {"type": "object"},  # a batch/v1 JobSpec
                                },
                            },
                        },
                    },
                },
                "network": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "enableDNSHostnames": {"type": "boolean"},
                        "subdomain": {"type": "string"},
                        "publishNotReadyAddresses": {"type": "boolean"},
                    },
                },
                "failurePolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "maxRestarts": {"type": "integer", "minimum": 0},
                        "rules": {"type": "array", "items": _FAILURE_RULE},
                    },
                },
                "successPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["operator"],
                    "properties": {
                        "operator": {"enum": ["All", "Any"]},
                        "targetReplicatedJobs": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "suspend": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
            },
        },
    },
}


def _cfg(**kube):
    cfg = load_config(REPO / "configs" / "digits.yaml")
    return cfg.with_overrides(
        store=STORE,
        **{"compute.backend": "kubernetes"},
        **{f"compute.kubernetes.{k}": v for k, v in kube.items()},
    )


@pytest.mark.parametrize("queue", [None, "gpu-queue"])
def test_jobset_validates_and_carries_the_same_indexed_job(queue):
    cfg = _cfg(gpus=4, nodes=3, kind="jobset", queue_name=queue)
    jobset = build_jobset(cfg, RUN, URI, STORE)
    jsonschema.validate(jobset, JOBSET_SCHEMA)
    [rjob] = jobset["spec"]["replicatedJobs"]
    template = rjob["template"]["spec"]
    name = jobset["metadata"]["name"]
    validate(
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": template}
    )
    _, job = build_manifests(
        cfg.with_overrides(**{"compute.kubernetes.kind": "job"}), RUN, URI, STORE
    )
    # the same failure semantics: per-index retries, the disruption rule, all pods at once
    for key in ("podFailurePolicy", "backoffLimitPerIndex", "maxFailedIndexes", "completions"):
        assert template[key] == job["spec"][key], key
    assert template["completionMode"] == "Indexed" and "backoffLimit" not in template
    pod, job_pod = template["template"]["spec"], job["spec"]["template"]["spec"]
    assert "subdomain" not in pod  # JobSet's network gives the pods their names
    assert jobset["spec"]["network"] == {
        "enableDNSHostnames": True,
        "subdomain": name,
        "publishNotReadyAddresses": True,
    }
    args, job_args = pod["containers"][0]["args"], job_pod["containers"][0]["args"]
    # the same command, meeting at JobSet's name of the first pod
    assert f"--rdzv-endpoint={name}-node-0-0.{name}:29500" in args
    assert rendezvous_host(name) == f"{name}-node-0-0.{name}"
    assert [a for a in args if "rdzv-endpoint" not in a] == [
        a for a in job_args if "rdzv-endpoint" not in a
    ]
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == cfg.compute.kubernetes.backoff_limit
    assert policy["rules"][0]["action"] == "FailJobSet"
    assert jobset["spec"].get("suspend") is (True if queue else None)
    assert ("suspend" in template) is False


def test_schema_refuses_what_the_crd_does_not_have():
    jobset = build_jobset(_cfg(nodes=2, kind="jobset"), RUN, URI, STORE)
    jobset["spec"]["network"]["enableDnsHostnames"] = True  # a misspelt field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(jobset, JOBSET_SCHEMA)
