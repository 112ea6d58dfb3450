"""The objects that serve a model version on Kubernetes, as the API's JSON: the
content-named ConfigMap (serve settings and nginx.conf), the Deployment whose pod template
pins the version (name, version and sha256), and the Service. Also ``retarget``: an
applied template turned to another version, changing only what names the model. Pure
functions: nothing here talks to a cluster."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from visionline.kube import DOMAIN, app_labels, pod_security_context, short_hash, tolerations
from visionline.registry import ModelRef
from visionline.serving.deploy import DeploymentError
from visionline.serving.fetch import POD_BACKEND_PORTS
from visionline.serving.kubernetes.containers import (
    CREDENTIALS_DIR,
    FETCH,
    HEALTH_PATH,
    NGINX_TMP,
    base_env,
    fetch_container,
    pin_env,
    proxy_container,
    torchserve_container,
    work_mounts,
)
from visionline.serving.nginx import Backend, RolloutFront, render_nginx_conf
from visionline.serving.torchserve import max_body_bytes

if TYPE_CHECKING:
    from visionline.config import KubernetesDeployConfig, PipelineConfig

COMPONENT = "serving"
PREVIOUS = f"{DOMAIN}/previous-template"  # the template the last deploy replaced
MODEL = f"{DOMAIN}/model"
SHA256 = f"{DOMAIN}/model-sha256"


def selector_labels(k: KubernetesDeployConfig, component: str = COMPONENT) -> dict[str, str]:
    # A Deployment's selector can never change: only labels that never will.
    return {
        "app.kubernetes.io/name": "visionline",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": k.deployment,
    }


def _labels(k: KubernetesDeployConfig) -> dict[str, str]:
    return {**app_labels(COMPONENT), **selector_labels(k)}


def serve_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return cfg.serve.model_dump(mode="json")


def front_conf(cfg: PipelineConfig, rollout: RolloutFront | None = None) -> str:
    """The pod's nginx.conf: the authenticating front of TorchServe on the pod's loopback,
    and with ``rollout`` the champion's front of a rollout (``serving.kubernetes.challenger``)."""
    serve = cfg.serve
    return render_nginx_conf(
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
        rollout=rollout,
    )


def config_map(cfg: PipelineConfig) -> dict[str, Any]:
    """Serve settings and nginx.conf, named after their content and immutable."""
    k = cfg.deploy.kubernetes
    nginx = front_conf(cfg)
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


def _volumes(k: KubernetesDeployConfig, config_map_name: str) -> list[dict[str, Any]]:
    return [
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "nginx-tmp", "emptyDir": {}},
        {"name": "serve", "configMap": {"name": config_map_name}},
        {
            "name": "credentials",
            # the Secret's keys are the accepted tokens (see serving.nginx)
            "secret": {"secretName": k.credential_secret, "defaultMode": 0o440},
        },
    ]


def pod_template(
    cfg: PipelineConfig, store_uri: str, ref: ModelRef, sha256: str, config_map_name: str
) -> dict[str, Any]:
    """The pod serving ``ref``: fetch-model, then TorchServe behind the nginx front."""
    k = cfg.deploy.kubernetes
    # One env and mount list for both model containers: they share the work directory.
    env, mounts = base_env(), work_mounts()
    spec: dict[str, Any] = {
        "serviceAccountName": k.service_account,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": k.termination_grace_period_seconds,
        "securityContext": pod_security_context(k.run_as_user),
        "initContainers": [fetch_container(k, store_uri, ref, sha256, env, mounts)],
        "containers": [torchserve_container(k, ref, env, mounts), proxy_container(k, cfg.serve)],
        "volumes": _volumes(k, config_map_name),
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
    changes (the init container's pin in its environment, the probes' ``--model``, the
    model labels and annotations); everything an operator applied (resources, settings,
    affinity, images, the command) stays as it is, and the manifest never names the pin,
    so re-applying it leaves the version served alone."""
    new = copy.deepcopy(template)
    spec = new.get("spec", {})
    inits = spec.get("initContainers") or []
    fetch = next((c for c in inits if c.get("name") == FETCH), None)
    if fetch is None:
        raise DeploymentError(
            "the Deployment's pod template has no fetch-model init container, so it was not "
            "made for visionline: apply k8s/base (kubectl apply -k k8s/overlays/<env>) or "
            "delete it and deploy again"
        )
    pinned = pin_env(store_uri, ref, sha256)
    names = {e["name"] for e in pinned}
    fetch["env"] = [e for e in fetch.get("env") or [] if e.get("name") not in names] + pinned
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
            # startup probe budget + node and image pull allowance: a slow but healthy
            # rollout is not failed while its pods still load
            "progressDeadlineSeconds": k.progress_deadline_seconds,
            "selector": {"matchLabels": selector_labels(k)},
            # CPU: a new version never takes capacity away before it is ready; GPU: no
            # spare GPU is needed (one replica goes first): deploy.kubernetes.max_surge
            "strategy": {"type": "RollingUpdate", "rollingUpdate": k.rolling_update},
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
            "selector": selector_labels(k),
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


def template_ref(template: dict[str, Any] | None) -> ModelRef | None:
    """The model version a pod template serves (its annotation), None when unmarked."""
    text = ((template or {}).get("metadata") or {}).get("annotations", {}).get(MODEL)
    if not text:
        return None
    name, _, version = text.partition(":")
    return ModelRef(name, version)
