"""What the test API server knows about the objects it stores: the 1.31 schemas they
must validate against, the label and field selectors lists filter by, and the
timestamps it stamps on them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = "1.31.0"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` does not validate against the 1.31 schema (strict), or a
    JobSet against the JobSet CRD's (jobset_crd.py)."""
    if str(obj.get("apiVersion", "")).startswith("jobset.x-k8s.io/"):
        from .jobset_crd import validate_jobset

        validate_jobset(obj)
        return
    # imported here: loading the schemas is slow, and only callers that validate pay it
    import kubernetes_validate

    kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)


def selector_matches(labels: dict[str, str], selector: str) -> bool:
    """Whether ``labels`` satisfy a label selector (``a=b,c!=d,e,!f``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_matches(obj: dict[str, Any], selector: str) -> bool:
    """Whether ``obj`` satisfies a field selector (``status.phase=Running,...``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        path, _, want = term.partition("=")
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != want.lstrip("="):
            return False
    return True
