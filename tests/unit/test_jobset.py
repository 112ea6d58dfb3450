"""``compute.kubernetes.kind: jobset`` (issue 18, defect 2): the JobSet of a multi-node run
carries the same Indexed Job as ``kind: job`` (same pod template, failure policy and
per-index retries) under the elastic rendezvous, at JobSet's pod names.

JobSet is a CRD, absent from the 1.31 schemas: the JobSet is checked against the schema
written from the JobSet CRD (tests/support/k8s/jobset_crd.py, jobset.x-k8s.io/v1alpha2,
the fields used here, with their types and enums), strict (no field it does not know);
its Job template is checked against the real batch/v1 Job schema. The test cluster
checks every JobSet written to it the same way."""

from __future__ import annotations

import jsonschema
import pytest

from tests.support.k8s import validate
from tests.support.k8s.job_config import RUN, STORE, URI
from tests.support.k8s.job_config import kube_config as _cfg
from tests.support.k8s.jobset_crd import JOBSET_SCHEMA, validate_jobset
from visionline.compute.kubernetes import build_manifests
from visionline.compute.kubernetes.jobset import build_jobset, jobset_name, rendezvous_host


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


@pytest.mark.parametrize("nodes", [2, 128])
def test_a_long_run_ids_pod_names_fit_what_the_jobset_webhook_allows(nodes):
    """The webhook refuses a JobSet whose pod names (``<jobset>-node-<job>-<pod>-<5>``)
    would pass 63 characters: a 52-character name, a Job's, did for every long run id."""
    run = "a-rather-long-model-name-resnet18-" + "0123456789ab" * 3
    jobset = build_jobset(_cfg(nodes=nodes, kind="jobset"), run, URI, STORE)
    name = jobset["metadata"]["name"]
    validate_jobset(jobset)  # the schema, the Job template, and the webhook's name checks
    assert len(f"{name}-node-0-{nodes - 1}-abcde") <= 63
    assert name == jobset_name(run) and name.startswith("train-a-rather-long")
    assert jobset_name(run) != jobset_name(run + "x")  # distinct runs, distinct names
