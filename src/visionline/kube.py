"""What the Kubernetes backends share: a lazily built API client, one translation of the
API's errors into errors an operator acts on, kubectl-style YAML, names and labels.

Objects are plain dicts in the API's own JSON shape (camelCase), built by our code and
sent through the official client; responses are turned back into such dicts, so the
code reads like the manifests an operator knows.

The kubernetes client is imported where a cluster is talked to, not at the top: it is the
optional client here. Rendering manifests (dry runs, ``k8s/`` checks) uses the names,
labels and YAML below without it, and importing it takes about half a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from visionline import __version__
from visionline.errors import VisionlineError

log = logging.getLogger(__name__)

PART_OF = "visionline"
MANAGED_BY = "visionline"
# Our own label and annotation prefix.
DOMAIN = "visionline.io"


class KubernetesApiError(VisionlineError):
    """The Kubernetes API refused or failed a request; the message says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubernetesPermissionError(KubernetesApiError):
    """403: the service account lacks a verb on a resource (RBAC)."""


class KubernetesNotFoundError(KubernetesApiError):
    pass


class KubernetesConflictError(KubernetesApiError):
    pass


def _kubeconfig() -> str:
    """KUBECONFIG as it is now: the client reads it once, when first imported."""
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def api_client(context: str | None = None) -> Any:
    """An ApiClient for ``context`` (kubeconfig), else the pod's service account when
    running in a cluster, else the current kubeconfig context."""
    from kubernetes import client, config

    try:
        if context is None:
            try:
                config.load_incluster_config()
                return client.ApiClient()
            except config.ConfigException:
                pass
        cfg = client.Configuration()
        config.load_kube_config(_kubeconfig(), context=context, client_configuration=cfg)
        return client.ApiClient(cfg)
    except (config.ConfigException, OSError) as e:
        where = f"context {context!r}" if context else "the current context"
        raise KubernetesApiError(
            f"no Kubernetes cluster to talk to ({where}): {e}. Point KUBECONFIG at a cluster, "
            "select a context with `kubectl config use-context`, or run inside a pod"
        ) from e


class KubernetesContextError(KubernetesApiError):
    """No usable Kubernetes context: no kubeconfig, or a broken one."""


def cluster_version(timeout: float = 5) -> tuple[str, str]:
    """Where the current context points (the in-cluster service account, or the kubeconfig
    context's name) and the API server's version. Raises KubernetesContextError when there
    is no usable context, KubernetesApiError when the API server does not answer."""
    from kubernetes import client, config

    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            where = "in-cluster service account"
        else:
            _, active = config.list_kube_config_contexts(_kubeconfig())
            config.load_kube_config(_kubeconfig())
            where = f"context {active['name']}"
    except Exception as e:
        raise KubernetesContextError(str(e).splitlines()[0][:120] if str(e) else repr(e)) from e
    try:
        return where, client.VersionApi().get_code(_request_timeout=timeout).git_version
    except Exception as e:
        host = client.Configuration.get_default_copy().host
        raise KubernetesApiError(
            f"{where}: the API server at {host} does not answer ({type(e).__name__})"
        ) from e


class KubeAccess:
    """API access shared by the Job backend and the serving deployer: the clients, built
    lazily from ``self.k`` (a config section with ``context``, ``namespace``, ``role``) or
    the ``api_client`` given, and calls whose API errors become ours."""

    k: Any
    _client: Any

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = api_client(self.k.context)
        return self._client

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.client)

    @property
    def batch(self) -> Any:
        from kubernetes import client

        return client.BatchV1Api(self.client)

    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.client)

    @property
    def custom(self) -> Any:
        """Custom resources (a JobSet)."""
        from kubernetes import client

        return client.CustomObjectsApi(self.client)

    def _call(self, verb: str, resource: str) -> Any:
        return api_errors(verb, resource, self.k.namespace, self.k.role)

    def _create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create a ConfigMap or Service; one already there (a content-addressed
        ConfigMap, or the same run's Service from an earlier attempt) is left as it is.
        True when this call created it."""
        kind = obj["kind"]
        plural, create = {
            "ConfigMap": ("configmaps", self.core.create_namespaced_config_map),
            "Service": ("services", self.core.create_namespaced_service),
        }[kind]
        try:
            with self._call("create", plural):
                create(self.k.namespace, obj)
        except KubernetesConflictError:
            return False
        log.info("created %s %s/%s", kind, self.k.namespace, obj["metadata"]["name"])
        return True


def _api_message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message") or "").strip()
    except (TypeError, ValueError, AttributeError):
        return str(body or "").strip()[:300]


@contextlib.contextmanager
def api_errors(verb: str, resource: str, namespace: str | None, role: str) -> Iterator[None]:
    """Turn the client's ApiException (raised inside the block) into our typed error,
    once, naming the request and what to do."""
    from kubernetes.client.exceptions import ApiException

    try:
        yield
    except ApiException as e:
        where = f" in namespace {namespace}" if namespace else ""
        said = _api_message(e.body) or e.reason or ""
        if e.status == 403:
            raise KubernetesPermissionError(
                f"not allowed to {verb} {resource}{where}: {said}. Grant verb {verb!r} on "
                f"{resource!r} to this service account in the Role {role!r} "
                f"(namespace {namespace}), e.g. `kubectl -n {namespace} edit role {role}`",
                403,
            ) from e
        if e.status == 401:
            raise KubernetesApiError(
                f"the Kubernetes API did not accept our credentials ({verb} {resource}{where}): "
                f"{said}. Refresh the kubeconfig credentials",
                401,
            ) from e
        if e.status == 404:
            raise KubernetesNotFoundError(f"{resource}{where} not found: {said}", 404) from e
        if e.status == 409:
            raise KubernetesConflictError(f"cannot {verb} {resource}{where}: {said}", 409) from e
        if e.status == 422:
            raise KubernetesApiError(
                f"the API rejected {resource}{where} as invalid ({verb}): {said}", 422
            ) from e
        raise KubernetesApiError(
            f"Kubernetes API error on {verb} {resource}{where}: {e.status} {said}", e.status
        ) from e


def as_dict(client: Any, obj: Any) -> dict[str, Any]:
    """A response model as the API's JSON (camelCase) dict."""
    if obj is None or isinstance(obj, dict):
        return obj or {}
    return client.sanitize_for_serialization(obj)


class _PlainDumper(yaml.SafeDumper):
    """No anchors: containers that share one env list or probe would otherwise print as
    ``&id001`` / ``*id001``, which kubectl never shows and a reviewer cannot diff."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """Objects as kubectl prints them: YAML documents separated by ``---``."""
    return "---\n".join(
        yaml.dump(o, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)
        for o in objects
    )


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_name(prefix: str, text: str, max_len: int = 52) -> str:
    """A DNS-1123 label derived from ``text``: lowercase, ``-`` for anything else, and a
    hash of the original so distinct texts never collide after the cleanup. 52 leaves
    room for the pod-name suffix a Job controller appends."""
    body = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    tail = short_hash(text)
    room = max_len - len(prefix) - len(tail) - 2
    body = body[: max(room, 0)].strip("-")
    return "-".join(p for p in (prefix, body, tail) if p)


def label_value(text: str) -> str:
    """``text`` if it is a valid label value (63 chars, alnum at both ends), else a
    cleaned, truncated form with a hash; the full text goes into an annotation."""
    if re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]", text):
        return text
    body = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:50].strip("-_.")
    return f"{body}-{short_hash(text)}" if body else short_hash(text)


def app_labels(component: str, name: str = PART_OF) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": label_value(__version__),
    }


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: changed keys,
    ``None`` for removed ones; lists are replaced whole."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def pod_security_context(run_as_user: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_user,
        "fsGroup": run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def tolerations(items: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for t in items:
        d = {
            "key": t.key,
            "operator": t.operator,
            "value": t.value,
            "effect": t.effect,
            "tolerationSeconds": t.toleration_seconds,
        }
        out.append({k: v for k, v in d.items() if v is not None})
    return out


def s3_env(secret: str | None, extra: dict[str, str]) -> list[dict[str, Any]]:
    """S3 credentials by reference to a Secret (never their values) plus plain env."""
    env = [{"name": k, "value": v} for k, v in sorted(extra.items())]
    if secret:
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            ref: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env
