"""The containers of a serving pod, one builder each: the ``fetch-model`` init container,
TorchServe, and the nginx front (``auth-proxy``), the only one listening on the pod's
network. Paths and ports here are the ones k8s/base names too."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionline.kube import container_security_context, s3_env
from visionline.registry import ModelRef
from visionline.serving.fetch import PIN_ENV, POD_BACKEND_PORTS

if TYPE_CHECKING:
    from visionline.config import KubernetesDeployConfig, ServeConfig

WORK = "/work"
MODEL_STORE = f"{WORK}/model-store"
TS_CONFIG = f"{WORK}/config.properties"
SERVE_DIR = "/etc/visionline/serve"
CREDENTIALS_DIR = "/etc/visionline/credentials"
NGINX_TMP = "/tmp/nginx"
HEALTH_PATH = "/healthz"
NGINX_CONF = "/etc/visionline/nginx/nginx.conf"
STARTUP_PERIOD = 5
FETCH = "fetch-model"
PYTHON = "python"


def work_mounts() -> list[dict[str, Any]]:
    """The writable directories of a read-only root filesystem, shared by the init
    container (which fills the model store) and TorchServe (which reads it)."""
    return [{"name": "work", "mountPath": WORK}, {"name": "tmp", "mountPath": "/tmp"}]


def base_env() -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": WORK},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def pin_env(store_uri: str, ref: ModelRef, sha256: str) -> list[dict[str, Any]]:
    """The version every pod of this template serves (serving.fetch reads it)."""
    values = {"store": store_uri, "model": str(ref), "sha256": sha256}
    return [{"name": env, "value": values[flag]} for env, flag in PIN_ENV.items()]


def fetch_container(
    k: KubernetesDeployConfig,
    store_uri: str,
    ref: ModelRef,
    sha256: str,
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Downloads the pinned ``.mar``, checks its sha256 and writes TorchServe's config.
    The command names the champion, as the applied manifest does; the pin is in the
    environment (``pin_env``), where ``kubectl apply -k`` never reaches."""
    return {
        "name": FETCH,
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": [
            PYTHON,
            "-m",
            "visionline.serving.fetch",
            "--store",
            store_uri,
            "--model",
            f"{ref.name}:champion",
            "--dest",
            MODEL_STORE,
            "--serve-config",
            f"{SERVE_DIR}/serve.json",
            "--ts-config",
            TS_CONFIG,
        ],
        "env": [*env, *s3_env(k.s3_secret, k.env), *pin_env(store_uri, ref, sha256)],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [*mounts, {"name": "serve", "mountPath": SERVE_DIR, "readOnly": True}],
    }


def _probe_commands(ref: ModelRef) -> tuple[list[str], list[str]]:
    """(ready, live): ready is a READY worker of the model, not an open port."""
    ready = [
        PYTHON,
        "-m",
        "visionline.serving.probe",
        "ready",
        "--model",
        ref.name,
        "--management",
        f"http://127.0.0.1:{POD_BACKEND_PORTS['management_port']}",
    ]
    live = [
        PYTHON,
        "-m",
        "visionline.serving.probe",
        "live",
        "--inference",
        f"http://127.0.0.1:{POD_BACKEND_PORTS['inference_port']}",
    ]
    return ready, live


def torchserve_container(
    k: KubernetesDeployConfig,
    ref: ModelRef,
    env: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    limits = dict(k.resources.limits)
    if k.gpus:
        limits["nvidia.com/gpu"] = str(k.gpus)
    ready, live = _probe_commands(ref)
    return {
        "name": "torchserve",
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        # in the foreground: the container lives as long as the server. `args`, not
        # `command`: the image's ENTRYPOINT (tini -g) stays PID 1 and passes SIGTERM to
        # the launcher's whole group, the JVM and its workers; TorchServe's launcher as
        # PID 1 would forward nothing.
        "args": [
            "torchserve",
            "--foreground",
            "--ncs",
            "--ts-config",
            TS_CONFIG,
            "--model-store",
            MODEL_STORE,
        ],
        "env": [
            *env,
            {"name": "TEMP", "value": "/tmp"},  # java.io.tmpdir: the workers' sockets
            {"name": "LOG_LOCATION", "value": f"{WORK}/logs"},
            {"name": "METRICS_LOCATION", "value": f"{WORK}/logs"},
        ],
        "resources": {"requests": dict(k.resources.requests), "limits": limits},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        # a large model may take minutes to load: the startup probe allows startup_seconds,
        # well inside progressDeadlineSeconds (which also allows for node and image pull)
        "startupProbe": {
            "exec": {"command": ready},
            "periodSeconds": STARTUP_PERIOD,
            "timeoutSeconds": 5,
            "failureThreshold": startup_failure_threshold(k),
        },
        # SIGTERM only once the front has drained and finished what it proxies to us
        "lifecycle": {"preStop": {"sleep": {"seconds": k.torchserve_prestop_seconds}}},
        "readinessProbe": {
            "exec": {"command": ready},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "exec": {"command": live},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
    }


def startup_failure_threshold(k: KubernetesDeployConfig) -> int:
    return max(6, -(-k.startup_seconds // STARTUP_PERIOD))


def proxy_prestop(k: KubernetesDeployConfig) -> list[str]:
    """Drain, then a graceful quit that waits for in-flight requests (serving.prestop)."""
    return [
        PYTHON,
        "-m",
        "visionline.serving.prestop",
        "--drain",
        str(k.drain_seconds),
        "--inflight",
        str(k.inflight_seconds),
        "--nginx-conf",
        NGINX_CONF,
    ]


def proxy_container(k: KubernetesDeployConfig, serve: ServeConfig) -> dict[str, Any]:
    """nginx: REST and gRPC with one credential from a Secret, and metrics."""
    return {
        "name": "auth-proxy",
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": [
            "nginx",
            "-e",
            "stderr",
            "-c",
            NGINX_CONF,
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
        # a terminating pod keeps answering while Services and ingresses stop sending to
        # it, then nginx quits gracefully (the kubelet's SIGTERM would be a fast shutdown)
        "lifecycle": {"preStop": {"exec": {"command": proxy_prestop(k)}}},
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
