"""``KubernetesDeployer`` (``deploy.target: kubernetes``): rolls the serving Deployment to a
model version by patching its pod template (or creates the objects when there is none),
waits for the rollout as ``kubectl rollout status`` reads it, says in operator words what
holds new pods up, rolls back to the template the last deploy replaced, and reports
status, endpoint and credential."""

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
    as_dict,
    merge_patch,
)
from visionline.registry import ModelRef, Registry
from visionline.serving.client import RestClient
from visionline.serving.deploy import DeploymentError, DeploymentStatus
from visionline.serving.kubernetes.containers import FETCH
from visionline.serving.kubernetes.objects import (
    COMPONENT,
    PREVIOUS,
    build_objects,
    retarget,
    selector_labels,
    template_ref,
)
from visionline.serving.nginx import is_token

if TYPE_CHECKING:
    from visionline.config import PipelineConfig
    from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


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
                what = "fetching the model" if cs["name"] == FETCH else cs["name"]
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
        self,
        cfg: PipelineConfig,
        store: ArtifactStore,
        api_client: Any | None = None,
        component: str = COMPONENT,
    ) -> None:
        self.cfg = cfg
        self.k = cfg.deploy.kubernetes
        self.store = store
        self._client = api_client
        self.component = component  # its pods' app.kubernetes.io/component

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
        keys = (*selector_labels(self.k, self.component), f"{DOMAIN}/model-version")
        selector = ",".join(f"{key}={labels[key]}" for key in keys if key in labels)
        with self._call("list", "pods"):
            items = self.core.list_namespaced_pod(self.k.namespace, label_selector=selector)
        return as_dict(self.client, items).get("items") or []

    def wait_rollout(self, timeout: float | None = None) -> str:
        """Wait until every replica runs the current template and is available; raise
        DeploymentError with what held it up otherwise."""
        deadline = time.monotonic() + (timeout or self.k.rollout_wait_seconds)
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
                    log.warning("rollout of %s: %s", template_ref(d["spec"]["template"]), detail)
            if "progress deadline exceeded" in left or time.monotonic() > deadline:
                why = "; ".join(details) or left
                raise DeploymentError(
                    f"the rollout of {template_ref(d['spec']['template'])} did not become available "
                    f"within {timeout or self.k.rollout_wait_seconds:.0f}s: {why}"
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
                template_ref(old),
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
                template_ref(current["spec"]["template"]),
            )
            return template_ref(current["spec"]["template"])
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
        ref = template_ref(previous)
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
            template_ref(d["spec"]["template"]), self.endpoint(), done and available > 0, detail
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
