"""The JobSet API (``jobset.x-k8s.io/v1alpha2``) as a cluster with the JobSet controller
serves it: the resource (namespaced, with a ``status`` subresource), the schema a JobSet
must validate against, and what the JobSet admission webhook refuses.

JobSet is a CRD, absent from the 1.31 schemas. ``JOBSET_SCHEMA`` is written from the
CRD of JobSet v0.8.2 (config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml), the
fields our code and the test controller use, with their types and enums, strict (no
field it does not know; the real API server would drop an unknown field, here it is an
error); each replicated Job's template is checked against the real batch/v1 Job schema.
The webhook's name checks (pkg/webhooks/jobset_webhook.go) are modelled: every Job name
``<jobset>-<replicatedJob>-<index>`` and every pod name
``<jobset>-<replicatedJob>-<job index>-<pod index>-abcde`` must be a DNS-1035 label (at
most 63 characters). Its defaulting is not written into the stored object (the test
controller reads an absent field as the default)."""

from __future__ import annotations

import re
from typing import Any

GROUP = "jobset.x-k8s.io"
VERSION = "v1alpha2"
PLURAL = "jobsets"
API_VERSION = f"{GROUP}/{VERSION}"

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
_INT = {"type": "integer", "minimum": 0}
# metav1.Condition
_CONDITION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "status", "reason", "message", "lastTransitionTime"],
    "properties": {
        "type": {"type": "string"},
        "status": {"enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string", "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"},
        "message": {"type": "string", "maxLength": 32768},
        "lastTransitionTime": {"type": "string"},
        "observedGeneration": _INT,
    },
}
_RJOB_STATUS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "ready", "succeeded", "failed", "active", "suspended"],
    "properties": {
        "name": {"type": "string"},
        **{k: _INT for k in ("ready", "succeeded", "failed", "active", "suspended")},
    },
}
JOBSET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": API_VERSION},
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
                # what the API server fills in
                "uid": {"type": "string"},
                "resourceVersion": {"type": "string"},
                "generation": _INT,
                "creationTimestamp": {"type": "string"},
                "deletionTimestamp": {"type": "string"},
                "deletionGracePeriodSeconds": _INT,
                "finalizers": {"type": "array", "items": {"type": "string"}},
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
        "status": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "conditions": {"type": "array", "items": _CONDITION},
                "restarts": _INT,
                "restartsCountTowardsMax": _INT,
                "terminalState": {"enum": ["Completed", "Failed"]},
                "replicatedJobsStatus": {"type": "array", "items": _RJOB_STATUS},
            },
        },
    },
}
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _webhook(obj: dict[str, Any]) -> None:
    """What the JobSet validating webhook refuses of the names a JobSet will generate."""
    name = obj["metadata"]["name"]
    for rjob in obj["spec"]["replicatedJobs"]:
        longest_job = f"{name}-{rjob['name']}-{max(rjob.get('replicas', 1) - 1, 0)}"
        if len(longest_job) > 63 or not _DNS1035.fullmatch(longest_job):
            raise ValueError(
                "JobSet name is too long, job names generated for this JobSet will exceed "
                f"63 characters ({longest_job})"
            )
        spec = rjob["template"]["spec"]
        if spec.get("completionMode", "Indexed") == "Indexed" and spec.get("completions"):
            pod = f"{longest_job}-{spec['completions'] - 1}-abcde"
            if len(pod) > 63:
                raise ValueError(
                    "JobSet name is too long, pod names generated for this JobSet will "
                    f"exceed 63 characters ({pod})"
                )


def validate_jobset(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` is not a JobSet the API server (schema) and the JobSet
    webhook (names) accept; each replicated Job's template must be a valid Job spec."""
    import jsonschema

    from .objects import validate

    jsonschema.validate(obj, JOBSET_SCHEMA)
    for rjob in obj["spec"]["replicatedJobs"]:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": f"{obj['metadata']['name']}-{rjob['name']}-0"},
            "spec": rjob["template"]["spec"],
        }
        validate(job)
    _webhook(obj)
