"""The objects of a rollout on Kubernetes (``deploy --shadow`` / ``--canary``): the
challenger beside the champion's Deployment, and the champion's front turned into the
rollout's front. Pure functions: nothing here talks to a cluster.

- the challenger's Deployment: the champion's pod template (as applied: its resources,
  images, settings) serving the challenger's version (``retarget``), under its own name
  and labels (``app.kubernetes.io/component: challenger``, so neither the champion's
  Service, HPA nor PodDisruptionBudget selects its pods), ``deploy.rollout.challenger_replicas``
  replicas and no HPA;
- its ClusterIP Service, which only the champion's fronts send to;
- the rollout's front: the champion pods' nginx.conf rendered by ``serving.nginx`` with a
  ``RolloutFront`` (the same templates as the local rollout), in a ConfigMap named after its
  content, mounted by the champion's ``auth-proxy`` in place of the plain one
  (``with_front``; ``without_front`` restores the template exactly). Its request log (one
  JSON line per answered request and side) goes to the container's stdout, where
  ``rollout status`` reads it (``kubectl logs -c auth-proxy``).

Once created, the Service and the ConfigMap name the challenger's Deployment as their
owner: deleting it (``rollout abort``) lets the garbage collector remove them.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

from visionline.errors import ConfigError
from visionline.kube import DOMAIN, app_labels, short_hash
from visionline.registry import ModelRef
from visionline.serving.deploy import DeploymentError
from visionline.serving.kubernetes.containers import NGINX_CONF
from visionline.serving.kubernetes.objects import (
    front_conf,
    retarget,
    selector_labels,
    service,
)
from visionline.serving.nginx import RolloutFront

if TYPE_CHECKING:
    from visionline.config import PipelineConfig

COMPONENT = "challenger"
ROLLOUT = f"{DOMAIN}/rollout"  # the rollout's state, on the challenger's Deployment
# who is ending the rollout and since when: claimed before anything is taken down, so a
# promote and a watchdog's rollback of the same rollout cannot both go ahead
ENDING = f"{DOMAIN}/rollout-ending"
FRONT_VOLUME = "rollout-front"
PLAIN_FRONT_VOLUME = "serve"  # the volume the champion's front mounts otherwise
FRONT_DIR = NGINX_CONF.rsplit("/", 1)[0]
PROXY = "auth-proxy"
# The shadow relay inside the champion's pod: loopback, beside TorchServe's ports
# (serving.fetch.POD_BACKEND_PORTS) and none of the front's.
RELAY_PORT = 18090
# The rollout's request log: the front container's stdout, i.e. its pod log.
REQUEST_LOG = "/dev/stdout"


def challenger_config(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with the challenger's Deployment and Service names in place of the
    champion's: ``<deployment>-challenger``, ``<service>-challenger``."""
    k = cfg.deploy.kubernetes
    names = {"deployment": f"{k.deployment}-{COMPONENT}", "service": f"{k.service}-{COMPONENT}"}
    for field, name in names.items():
        if len(name) > 63:
            raise ConfigError(
                f"deploy.kubernetes.{field}: the challenger's {field} would be {name!r}, over "
                "the 63 characters a Kubernetes name may have: shorten the champion's"
            )
    return cfg.with_overrides(**{f"deploy.kubernetes.{f}": n for f, n in names.items()})


def labels(cfg: PipelineConfig) -> dict[str, str]:
    """The labels of every object of the rollout (``cfg``: the champion's)."""
    kc = challenger_config(cfg).deploy.kubernetes
    return {**app_labels(COMPONENT), **selector_labels(kc, COMPONENT)}


def rollout_front(cfg: PipelineConfig, mode: str, percent: float) -> RolloutFront:
    """The champion's front of a rollout: the challenger reached through its Service."""
    kc = challenger_config(cfg).deploy.kubernetes
    return RolloutFront(
        mode,
        percent,
        f"{kc.service}.{kc.namespace}.svc",
        cfg.serve.inference_port,
        RELAY_PORT,
        REQUEST_LOG,
        cfg.deploy.rollout.challenger_timeout_s,
    )


def front_config_map(cfg: PipelineConfig, mode: str, percent: float) -> dict[str, Any]:
    """The rollout front's nginx.conf, named after its content and immutable."""
    k = cfg.deploy.kubernetes
    data = {"nginx.conf": front_conf(cfg, rollout_front(cfg, mode, percent))}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{k.deployment}-front-{short_hash(json.dumps(data, sort_keys=True), 10)}",
            "namespace": k.namespace,
            "labels": labels(cfg),
        },
        "immutable": True,
        "data": data,
    }


def _front_mount(template: dict[str, Any]) -> dict[str, Any]:
    """The champion's front mount of its nginx.conf directory."""
    for c in template.get("spec", {}).get("containers") or []:
        if c.get("name") == PROXY:
            for m in c.get("volumeMounts") or []:
                if m.get("mountPath") == FRONT_DIR:
                    return m
    raise DeploymentError(
        f"the champion's pod template has no {PROXY} container mounting {FRONT_DIR}, so it "
        "was not made for visionline: apply k8s/base (kubectl apply -k k8s/overlays/<env>)"
    )


def with_front(template: dict[str, Any], config_map_name: str) -> dict[str, Any]:
    """The champion's pod template with its front reading the rollout's nginx.conf."""
    new = without_front(template)
    mount = _front_mount(new)
    if mount.get("name") != PLAIN_FRONT_VOLUME:
        raise DeploymentError(
            f"the champion's {PROXY} reads {FRONT_DIR} from volume {mount.get('name')!r}, "
            f"not {PLAIN_FRONT_VOLUME!r}: apply k8s/base, then start the rollout again"
        )
    mount["name"] = FRONT_VOLUME
    new["spec"]["volumes"] = [
        *new["spec"].get("volumes", []),
        {"name": FRONT_VOLUME, "configMap": {"name": config_map_name}},
    ]
    return new


def without_front(template: dict[str, Any]) -> dict[str, Any]:
    """The champion's pod template as it was before ``with_front``."""
    new = copy.deepcopy(template)
    spec = new.setdefault("spec", {})
    if not any(v.get("name") == FRONT_VOLUME for v in spec.get("volumes") or []):
        return new
    spec["volumes"] = [v for v in spec["volumes"] if v.get("name") != FRONT_VOLUME]
    _front_mount(new)["name"] = PLAIN_FRONT_VOLUME
    return new


def front_of(template: dict[str, Any]) -> str | None:
    """The rollout front's ConfigMap the template mounts; None: the plain front."""
    for v in template.get("spec", {}).get("volumes") or []:
        if v.get("name") == FRONT_VOLUME:
            return v.get("configMap", {}).get("name")
    return None


def challenger_template(
    cfg: PipelineConfig, champion: dict[str, Any], store_uri: str, ref: ModelRef, sha256: str
) -> dict[str, Any]:
    """The champion's pod template serving ``ref`` under the challenger's labels, with
    the plain front (the challenger mirrors nothing)."""
    kc = challenger_config(cfg).deploy.kubernetes
    champion_selector = selector_labels(cfg.deploy.kubernetes)
    template = retarget(without_front(champion), store_uri, ref, sha256)
    template["metadata"]["labels"].update(labels(cfg))
    # spread the challenger's replicas among themselves, not among the champion's
    for c in template["spec"].get("topologySpreadConstraints") or []:
        match = (c.get("labelSelector") or {}).get("matchLabels") or {}
        if match == champion_selector:
            c["labelSelector"]["matchLabels"] = selector_labels(kc, COMPONENT)
    return template


def challenger_deployment(
    cfg: PipelineConfig, template: dict[str, Any], state: dict[str, Any]
) -> dict[str, Any]:
    """The challenger's Deployment, carrying the rollout's ``state`` (mode, percent,
    champion, challenger, start) in an annotation."""
    kc = challenger_config(cfg).deploy.kubernetes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": kc.deployment,
            "namespace": kc.namespace,
            "labels": labels(cfg),
            "annotations": {ROLLOUT: json.dumps(state, sort_keys=True)},
        },
        "spec": {
            "replicas": cfg.deploy.rollout.challenger_replicas,
            "revisionHistoryLimit": 2,
            "progressDeadlineSeconds": kc.progress_deadline_seconds,
            "selector": {"matchLabels": selector_labels(kc, COMPONENT)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": kc.rolling_update},
            "template": template,
        },
    }


def challenger_service(cfg: PipelineConfig) -> dict[str, Any]:
    """The challenger's ClusterIP Service: REST and gRPC, as the champion's."""
    svc = service(challenger_config(cfg))
    svc["metadata"]["labels"] = labels(cfg)
    svc["spec"]["selector"] = selector_labels(challenger_config(cfg).deploy.kubernetes, COMPONENT)
    return svc


def owned_by(obj: dict[str, Any], deployment: str, uid: str) -> dict[str, Any]:
    """``obj`` garbage-collected with the Deployment ``deployment`` (its ``uid``)."""
    out = copy.deepcopy(obj)
    out["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": uid}
    ]
    return out


def rollout_state(deployment: dict[str, Any] | None) -> dict[str, Any] | None:
    """The state the challenger's Deployment carries; None when there is none (or it is
    being deleted)."""
    meta = (deployment or {}).get("metadata") or {}
    annotations = meta.get("annotations") or {}
    text = annotations.get(ROLLOUT)
    if not text or meta.get("deletionTimestamp"):
        return None
    ending = annotations.get(ENDING)
    return {**json.loads(text), "active": True, "ending": json.loads(ending) if ending else None}
