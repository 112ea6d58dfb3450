"""Serving on Kubernetes (``deploy.target: kubernetes``): one TorchServe Deployment behind
a Service, rolled to a model version by patching its pod template.

Each pod (all objects built here, in Python, from ``deploy.kubernetes`` and ``serve``):

- init container ``fetch-model`` (``python -m visionline.serving.fetch``): downloads the
  ``.mar`` of the version the template pins (name, version and sha256 are in the
  template, so a Deployment revision always means the same bytes), checks its sha256,
  and writes TorchServe's ``config.properties`` from the serve settings (ConfigMap);
- container ``torchserve``: TorchServe in the foreground on the pod's loopback, its own
  token auth off; readiness is a READY worker of the model (``serving.probe``), not an
  open port;
- container ``auth-proxy``: nginx (``serving.nginx``), the only thing listening on the
  pod's network: REST 8080 and gRPC 7070 with one credential from a Secret, metrics 8082.

``deploy(ref)`` patches the template (a JSON merge patch, with the template it replaces
kept in an annotation and the resourceVersion as a precondition), waits for the rollout
(observed generation, updated and available replicas, before a deadline), and returns a
client that reaches the Service with the credential. ``deploy_checked`` then runs the
smoke and parity checks through that client and calls ``rollback()`` on any failure,
which restores the previous template, so the champion alias never moves.

The ConfigMap holding the serve settings and the nginx config is named after its
content (as kustomize's generator does) and immutable: a settings change is a new
ConfigMap and a new template, and an old template still finds its own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from visionline.errors import ServingError
from visionline.kube import (
    DOMAIN,
    KubeAccess,
    KubernetesConflictError,
    KubernetesNotFoundError,
    app_labels,
    as_dict,
    container_security_context,
    merge_patch,
    pod_security_context,
    s3_env,
    short_hash,
    tolerations,
)
from visionline.registry import ModelRef, Registry
from visionline.serving.client import RestClient
from visionline.serving.deploy import DeploymentError, DeploymentStatus
from visionline.serving.fetch import POD_BACKEND_PORTS
from visionline.serving.nginx import Backend, is_token, render_nginx_conf
from visionline.serving.torchserve import max_body_bytes

if TYPE_CHECKING:
    from visionline.config import KubernetesDeployConfig, PipelineConfig
    from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)

COMPONENT = "serving"
WORK = "/work"
MODEL_STORE = f"{WORK}/model-store"
TS_CONFIG = f"{WORK}/config.properties"
SERVE_DIR = "/etc/visionline/serve"
CREDENTIALS_DIR = "/etc/visionline/credentials"
NGINX_TMP = "/tmp/nginx"
HEALTH_PATH = "/healthz"
PREVIOUS = f"{DOMAIN}/previous-template"  # the template the last deploy replaced
MODEL = f"{DOMAIN}/model"
SHA256 = f"{DOMAIN}/model-sha256"


def _selector(k: KubernetesDeployConfig) -> dict[str, str]:
    # A Deployment's selector can never change: only labels that never will.
    return {
        "app.kubernetes.io/name": "visionline",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/instance": k.deployment,
    }


def _labels(k: KubernetesDeployConfig) -> dict[str, str]:
    return {**app_labels(COMPONENT), **_selector(k)}


def serve_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return cfg.serve.model_dump(mode="json")


def config_map(cfg: PipelineConfig) -> dict[str, Any]:
    """Serve settings and nginx.conf, named after their content and immutable."""
    k, serve = cfg.deploy.kubernetes, cfg.serve
    nginx = render_nginx_conf(
        credentials_dir=CREDENTIALS_DIR,
        backend=Backend(
            "127.0.0.1",
            POD_BACKEND_PORTS["inference_port"],
            POD_BACKEND_PORTS["grpc_inference_port"],
            POD_BACKEND_PORTS["metrics_port"],
        ),
        rest_port=serve.inference_port,
        grpc_port=serve.grpc_inference_port,
        metrics_port=serve.metrics_port,
        tmp_dir=NGINX_TMP,
        max_body_bytes=max_body_bytes(serve),
        max_image_bytes=serve.max_request_bytes,
        health_path=HEALTH_PATH,
    )
    data = {
        "serve.json": json.dumps(serve_settings(cfg), indent=2, sort_keys=True) + "\n",
        "nginx.conf": nginx,
    }
    digest = short_hash(json.dumps(data, sort_keys=True), 10)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{k.deployment}-{digest}",
            "namespace": k.namespace,
            "labels": _labels(k),
        },
        "immutable": True,
        "data": data,
    }


def pod_template(
    cfg: PipelineConfig, store_uri: str, ref: ModelRef, sha256: str, config_map_name: str
) -> dict[str, Any]:
    k, serve = cfg.deploy.kubernetes, cfg.serve
    python = "python"
    mounts_work = [{"name": "work", "mountPath": WORK}, {"name": "tmp", "mountPath": "/tmp"}]
    env_base = [
        {"name": "HOME", "value": WORK},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    limits = dict(k.resources.limits)
    if k.gpus:
        limits["nvidia.com/gpu"] = str(k.gpus)
    ready_cmd = [
        python,
        "-m",
        "visionline.serving.probe",
        "ready",
        "--model",
        ref.name,
        "--management",
        f"http://127.0.0.1:{POD_BACKEND_PORTS['management_port']}",
    ]
    live_cmd = [
        python,
        "-m",
        "visionline.serving.probe",
        "live",
        "--inference",
        f"http://127.0.0.1:{POD_BACKEND_PORTS['inference_port']}",
    ]
    fetch = {
        "name": "fetch-model",
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": [
            python,
            "-m",
            "visionline.serving.fetch",
            "--store",
            store_uri,
            "--model",
            str(ref),
            "--sha256",
            sha256,
            "--dest",
            MODEL_STORE,
            "--serve-config",
            f"{SERVE_DIR}/serve.json",
            "--ts-config",
            TS_CONFIG,
        ],
        "env": [*env_base, *s3_env(k.s3_secret, k.env)],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [*mounts_work, {"name": "serve", "mountPath": SERVE_DIR, "readOnly": True}],
    }
    torchserve = {
        "name": "torchserve",
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        # in the foreground: the container lives as long as the server
        "command": [
            python,
            "-m",
            "ts.model_server",
            "--foreground",
            "--ncs",
            "--ts-config",
            TS_CONFIG,
            "--model-store",
            MODEL_STORE,
        ],
        "env": [
            *env_base,
            {"name": "TEMP", "value": "/tmp"},  # java.io.tmpdir: the workers' sockets
            {"name": "LOG_LOCATION", "value": f"{WORK}/logs"},
            {"name": "METRICS_LOCATION", "value": f"{WORK}/logs"},
        ],
        "resources": {"requests": dict(k.resources.requests), "limits": limits},
        "securityContext": container_security_context(),
        "volumeMounts": mounts_work,
        # a large model may take minutes to load: the startup probe allows for it
        "startupProbe": {
            "exec": {"command": ready_cmd},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": max(6, int(k.rollout_timeout_seconds // 5)),
        },
        "readinessProbe": {
            "exec": {"command": ready_cmd},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "exec": {"command": live_cmd},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }
    proxy = {
        "name": "auth-proxy",
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": [
            "nginx",
            "-e",
            "stderr",
            "-c",
            "/etc/visionline/nginx/nginx.conf",
            "-g",
            "daemon off;",
        ],
        "ports": [
            {"name": "http", "containerPort": serve.inference_port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": serve.grpc_inference_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": serve.metrics_port, "protocol": "TCP"},
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": container_security_context(),
        # a terminating pod keeps answering while Services and ingresses stop sending to it
        "lifecycle": {"preStop": {"sleep": {"seconds": 10}}},
        "readinessProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": "http"},
            "periodSeconds": 10,
        },
        "livenessProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": "http"},
            "periodSeconds": 20,
        },
        "volumeMounts": [
            {"name": "serve", "mountPath": "/etc/visionline/nginx", "readOnly": True},
            {"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True},
            {"name": "nginx-tmp", "mountPath": NGINX_TMP},
        ],
    }
    spec: dict[str, Any] = {
        "serviceAccountName": k.service_account,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": k.termination_grace_period_seconds,
        "securityContext": pod_security_context(k.run_as_user),
        "initContainers": [fetch],
        "containers": [torchserve, proxy],
        "volumes": [
            {"name": "work", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "nginx-tmp", "emptyDir": {}},
            {"name": "serve", "configMap": {"name": config_map_name}},
            {
                "name": "credentials",
                # the Secret's keys are the accepted tokens (see serving.nginx)
                "secret": {"secretName": k.credential_secret, "defaultMode": 0o440},
            },
        ],
    }
    if k.node_selector:
        spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        spec["tolerations"] = tolerations(k.tolerations)
    if k.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in k.image_pull_secrets]
    return {
        "metadata": {
            "labels": {
                **_labels(k),
                f"{DOMAIN}/model": ref.name,
                f"{DOMAIN}/model-version": ref.version,
            },
            "annotations": {MODEL: str(ref), SHA256: sha256},
        },
        "spec": spec,
    }


def _set_flag(command: list[str], flag: str, value: str) -> list[str]:
    """``command`` with ``flag``'s value set (appended when the flag is absent)."""
    out = list(command)
    if flag in out and out.index(flag) + 1 < len(out):
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def retarget(
    template: dict[str, Any], store_uri: str, ref: ModelRef, sha256: str
) -> dict[str, Any]:
    """The pod template ``template`` serving ``ref`` instead: only what names the model
    changes (the init container's ``--store/--model/--sha256``, the probes' ``--model``,
    the model labels and annotations); everything an operator applied (resources,
    settings, affinity, images) stays as it is."""
    import copy

    new = copy.deepcopy(template)
    spec = new.get("spec", {})
    inits = spec.get("initContainers") or []
    fetch = next((c for c in inits if c.get("name") == "fetch-model"), None)
    if fetch is None:
        raise DeploymentError(
            "the Deployment's pod template has no fetch-model init container, so it was not "
            "made for visionline: apply k8s/base (kubectl apply -k k8s/overlays/<env>) or "
            "delete it and deploy again"
        )
    cmd = _set_flag(fetch["command"], "--store", store_uri)
    cmd = _set_flag(cmd, "--model", str(ref))
    fetch["command"] = _set_flag(cmd, "--sha256", sha256)
    for c in spec.get("containers") or []:
        for probe in ("startupProbe", "readinessProbe"):
            command = ((c.get(probe) or {}).get("exec") or {}).get("command")
            if command and "--model" in command:
                c[probe]["exec"]["command"] = _set_flag(command, "--model", ref.name)
    meta = new.setdefault("metadata", {})
    meta.setdefault("labels", {}).update(
        {f"{DOMAIN}/model": ref.name, f"{DOMAIN}/model-version": ref.version}
    )
    meta.setdefault("annotations", {}).update({MODEL: str(ref), SHA256: sha256})
    return new


def deployment(cfg: PipelineConfig, template: dict[str, Any]) -> dict[str, Any]:
    k = cfg.deploy.kubernetes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": k.deployment, "namespace": k.namespace, "labels": _labels(k)},
        "spec": {
            "replicas": k.replicas,
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": int(k.rollout_timeout_seconds),
            "selector": {"matchLabels": _selector(k)},
            # a new version never takes capacity away before it is ready
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": template,
        },
    }


def service(cfg: PipelineConfig) -> dict[str, Any]:
    """Inference only: REST and gRPC; management is never exposed, metrics are scraped
    from the pods by what a NetworkPolicy admits."""
    k, serve = cfg.deploy.kubernetes, cfg.serve
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": k.service, "namespace": k.namespace, "labels": _labels(k)},
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(k),
            "ports": [
                {
                    "name": "http",
                    "port": serve.inference_port,
                    "targetPort": "http",
                    "protocol": "TCP",
                },
                {
                    "name": "grpc",
                    "port": serve.grpc_inference_port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def build_objects(
    cfg: PipelineConfig, store_uri: str, ref: ModelRef, sha256: str
) -> list[dict[str, Any]]:
    """Everything serving ``ref`` takes: ConfigMap, Deployment, Service."""
    cm = config_map(cfg)
    template = pod_template(cfg, store_uri, ref, sha256, cm["metadata"]["name"])
    return [cm, deployment(cfg, template), service(cfg)]


def _ref(template: dict[str, Any] | None) -> ModelRef | None:
    text = ((template or {}).get("metadata") or {}).get("annotations", {}).get(MODEL)
    if not text:
        return None
    name, _, version = text.partition(":")
    return ModelRef(name, version)


def _rollout_state(d: dict[str, Any]) -> tuple[bool, str]:
    """(done, what is left), read as ``kubectl rollout status`` does."""
    spec, status = d.get("spec", {}), d.get("status", {})
    want = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < d["metadata"].get("generation", 1):
        return False, "waiting for the controller to see the new template"
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return False, f"progress deadline exceeded: {c.get('message', '')}"
    updated = status.get("updatedReplicas", 0)
    total = status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < want:
        return False, f"{updated} of {want} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas still terminating"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available}/{want} replicas available"


def _pod_detail(pod: dict[str, Any]) -> str | None:
    """Why a pod of the new template is not ready, in operator words."""
    name = pod["metadata"]["name"]
    status = pod.get("status", {})
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"pod {name} cannot be scheduled: {c.get('message') or c.get('reason')}"
    for kind in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(kind) or []:
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            term = (cs.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                return f"pod {name}: cannot pull the image ({waiting['reason']}: {waiting.get('message', '')})"
            if waiting.get("reason") in ("CreateContainerConfigError", "CreateContainerError"):
                return f"pod {name}: container {cs['name']} cannot start ({waiting['reason']}: {waiting.get('message', '')}); a Secret or ConfigMap may be missing"
            if term.get("reason") == "OOMKilled":
                return f"pod {name}: container {cs['name']} ran out of memory (OOMKilled): raise deploy.kubernetes.resources.limits.memory"
            if waiting.get("reason") == "CrashLoopBackOff" or (term and term.get("exitCode")):
                what = "fetching the model" if cs["name"] == "fetch-model" else cs["name"]
                return (
                    f"pod {name}: {what} keeps failing (exit {term.get('exitCode', '?')}"
                    f"{', ' + term['message'].strip() if term.get('message') else ''}); "
                    f"kubectl logs {name} -c {cs['name']}"
                )
            if (
                kind == "containerStatuses"
                and cs.get("name") == "torchserve"
                and not cs.get("ready")
            ):
                return f"pod {name}: no READY worker of the model yet (readiness probe)"
    return None


class KubernetesDeployer(KubeAccess):
    """Deployer for ``deploy.target: kubernetes``."""

    def __init__(
        self, cfg: PipelineConfig, store: ArtifactStore, api_client: Any | None = None
    ) -> None:
        self.cfg = cfg
        self.k = cfg.deploy.kubernetes
        self.store = store
        self._client = api_client

    # -- objects ------------------------------------------------------------------------
    def manifests(self, ref: ModelRef) -> list[dict[str, Any]]:
        """The objects that serve ``ref`` (what ``--dry-run -o yaml`` prints)."""
        info = Registry(self.store, ref.name).info(ref.version)
        return build_objects(self.cfg, self.store.uri, ref, info["sha256"])

    def _read(self) -> dict[str, Any] | None:
        try:
            with self._call("get", "deployments"):
                return as_dict(
                    self.client,
                    self.apps.read_namespaced_deployment(self.k.deployment, self.k.namespace),
                )
        except KubernetesNotFoundError:
            return None

    def _patch_current(self, change: Any, attempts: int = 10) -> dict[str, Any]:
        """Patch what ``change(current Deployment)`` computes, guarded by the
        resourceVersion it was computed from; when someone else wrote in between (the
        controller updating the status, another deploy), read again and recompute."""
        for _ in range(attempts):
            current = self._read()
            if current is None:
                raise DeploymentError(f"Deployment {self.k.namespace}/{self.k.deployment} is gone")
            patch = change(current)
            patch.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                "resourceVersion"
            ]
            try:
                return {"old": current["spec"]["template"], "new": self._patch(patch)}
            except KubernetesConflictError:
                time.sleep(self.k.poll_seconds / 2)
        raise DeploymentError(
            f"Deployment {self.k.deployment} kept changing under us ({attempts} conflicts); "
            "try again"
        )

    def _patch(self, patch: dict[str, Any]) -> dict[str, Any]:
        with self._call("patch", "deployments"):
            return as_dict(
                self.client,
                self.apps.patch_namespaced_deployment(
                    self.k.deployment,
                    self.k.namespace,
                    patch,
                    _content_type="application/merge-patch+json",
                ),
            )

    # -- rollout ------------------------------------------------------------------------
    def _new_pods(self, template: dict[str, Any]) -> list[dict[str, Any]]:
        labels = template["metadata"]["labels"]
        selector = ",".join(
            f"{key}={labels[key]}" for key in (*_selector(self.k), f"{DOMAIN}/model-version")
        )
        with self._call("list", "pods"):
            items = self.core.list_namespaced_pod(self.k.namespace, label_selector=selector)
        return as_dict(self.client, items).get("items") or []

    def wait_rollout(self, timeout: float | None = None) -> str:
        """Wait until every replica runs the current template and is available; raise
        DeploymentError with what held it up otherwise."""
        deadline = time.monotonic() + (timeout or self.k.rollout_timeout_seconds)
        seen: set[str] = set()
        left = "no status yet"
        while True:
            d = self._read()
            if d is None:
                raise DeploymentError(f"Deployment {self.k.namespace}/{self.k.deployment} is gone")
            done, left = _rollout_state(d)
            if done:
                return left
            details = [x for x in map(_pod_detail, self._new_pods(d["spec"]["template"])) if x]
            for detail in details:
                if detail not in seen:
                    seen.add(detail)
                    log.warning("rollout of %s: %s", _ref(d["spec"]["template"]), detail)
            if "progress deadline exceeded" in left or time.monotonic() > deadline:
                why = "; ".join(details) or left
                raise DeploymentError(
                    f"the rollout of {_ref(d['spec']['template'])} did not become available "
                    f"within {timeout or self.k.rollout_timeout_seconds:.0f}s: {why}"
                )
            time.sleep(self.k.poll_seconds)

    # -- Deployer -------------------------------------------------------------------------
    def deploy(self, ref: ModelRef) -> RestClient:
        """Roll the Deployment to ``ref`` and wait until it is available. On failure the
        new template stays in place (``rollback()`` restores the previous one).

        An existing Deployment (as ``kubectl apply -k`` left it) is retargeted: only what
        names the model changes, which needs ``patch`` on that one Deployment. Without
        one, the ConfigMap, Deployment and Service are created from ``manifests``."""
        sha256 = Registry(self.store, ref.name).info(ref.version)["sha256"]
        current = self._read()
        if current is None:
            cm, dep, svc = self.manifests(ref)
            self._create_if_absent(cm)
            dep["metadata"]["annotations"] = {PREVIOUS: "null"}
            with self._call("create", "deployments"):
                self.apps.create_namespaced_deployment(self.k.namespace, dep)
            log.info(
                "created Deployment %s/%s serving %s", self.k.namespace, self.k.deployment, ref
            )
            self._create_if_absent(svc)
        else:

            def to_new(d: dict[str, Any]) -> dict[str, Any]:
                old = d["spec"]["template"]
                return {
                    "metadata": {"annotations": {PREVIOUS: json.dumps(old, sort_keys=True)}},
                    "spec": {
                        "template": merge_patch(old, retarget(old, self.store.uri, ref, sha256))
                    },
                }

            old = self._patch_current(to_new)["old"]
            log.info(
                "patched Deployment %s/%s: %s -> %s",
                self.k.namespace,
                self.k.deployment,
                _ref(old),
                ref,
            )
        self.wait_rollout()
        return RestClient(self.endpoint(), ref.name, self.token())

    def rollback(self) -> ModelRef | None:
        """Serve again the template the last deploy replaced; None when that deploy
        created the Deployment (which is then deleted: nothing was served before)."""
        current = self._read()
        if current is None:
            return None
        saved = (current["metadata"].get("annotations") or {}).get(PREVIOUS)
        if saved is None:
            log.info(
                "nothing to roll back: %s is what the last deploy left",
                _ref(current["spec"]["template"]),
            )
            return _ref(current["spec"]["template"])
        if saved == "null":
            with self._call("delete", "deployments"):
                self.apps.delete_namespaced_deployment(
                    self.k.deployment, self.k.namespace, propagation_policy="Foreground"
                )
            log.warning(
                "rolled back: deleted Deployment %s (nothing was served before)", self.k.deployment
            )
            return None
        previous = json.loads(saved)
        self._patch_current(
            lambda d: {
                "metadata": {"annotations": {PREVIOUS: None}},
                "spec": {"template": merge_patch(d["spec"]["template"], previous)},
            }
        )
        ref = _ref(previous)
        log.warning("rolled back Deployment %s to %s", self.k.deployment, ref)
        try:
            self.wait_rollout()
        except DeploymentError as e:
            log.error("the restored %s is not available either: %s", ref, e)
        return ref

    def status(self) -> DeploymentStatus:
        d = self._read()
        if d is None:
            return DeploymentStatus(
                None,
                self.endpoint(),
                False,
                f"no Deployment {self.k.namespace}/{self.k.deployment}",
            )
        done, detail = _rollout_state(d)
        available = d.get("status", {}).get("availableReplicas", 0)
        return DeploymentStatus(
            _ref(d["spec"]["template"]), self.endpoint(), done and available > 0, detail
        )

    def endpoint(self) -> str:
        if self.k.endpoint:
            return self.k.endpoint.rstrip("/")
        return f"http://{self.k.service}.{self.k.namespace}.svc:{self.cfg.serve.inference_port}"

    def token(self) -> str:
        """The inference credential: from ``credential_env``, else the credential
        Secret's first token (needs ``get`` on that one Secret)."""
        value = os.environ.get(self.k.credential_env)
        if value:
            return value
        try:
            with self._call("get", "secrets"):
                secret = as_dict(
                    self.client,
                    self.core.read_namespaced_secret(self.k.credential_secret, self.k.namespace),
                )
        except KubernetesNotFoundError as e:
            raise ServingError(
                f"no credential Secret {self.k.namespace}/{self.k.credential_secret}: create it "
                f"(kubectl -n {self.k.namespace} create secret generic "
                f"{self.k.credential_secret} --from-literal=<token>=<holder>) or set "
                f"{self.k.credential_env}"
            ) from e
        tokens = sorted(key for key in (secret.get("data") or {}) if is_token(key))
        if not tokens:
            raise ServingError(
                f"Secret {self.k.credential_secret} holds no token (keys must be 16-256 "
                "characters of A-Z a-z 0-9 _ -)"
            )
        return tokens[0]

    def stop(self) -> None:
        """Take the model out of service (0 replicas); a deploy brings it back."""
        self._patch({"spec": {"replicas": 0}})
