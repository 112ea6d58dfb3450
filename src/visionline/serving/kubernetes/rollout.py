"""``KubernetesRollout``: a shadow or canary rollout on Kubernetes (``deploy.target:
kubernetes``), the same interface as the local one (``serving.rollout.local``).

Start: the challenger's Deployment (carrying the rollout's state in an annotation), then
its Service and the rollout front's ConfigMap, both owned by that Deployment; once the
challenger is available, the champion's pod template is patched to mount the rollout
front (``challenger.with_front``), which rolls the champion's pods as any template
change does (no request lost, see ``serving.kubernetes``). End (abort, promote, the
canary's watchdog): the champion's front is restored first and rolled out, then the
challenger's Deployment is deleted and the garbage collector takes its Service and
ConfigMap. The verdict reads the request log from the champion pods' front containers
(``kubectl logs -c auth-proxy``): requests answered by pods that are gone since are not
in it, and the report says how many pods it read.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from visionline.errors import ConfigError, ServingError
from visionline.kube import (
    KubeAccess,
    KubernetesApiError,
    KubernetesConflictError,
    KubernetesNotFoundError,
    as_dict,
    merge_patch,
)
from visionline.registry import ModelRef, Registry
from visionline.serving.deploy import DeploymentError, DeployResult, deploy_checked
from visionline.serving.kubernetes.challenger import (
    COMPONENT,
    ENDING,
    PROXY,
    challenger_config,
    challenger_deployment,
    challenger_service,
    challenger_template,
    front_config_map,
    front_of,
    owned_by,
    rollout_state,
    with_front,
    without_front,
)
from visionline.serving.kubernetes.deployer import KubernetesDeployer
from visionline.serving.kubernetes.objects import (
    build_objects,
    deployment,
    selector_labels,
    template_ref,
)
from visionline.serving.rollout.evidence import parse_request_log, rollout_report
from visionline.serving.rollout.local import RolloutChanged, margins, same_rollout

if TYPE_CHECKING:
    from visionline.config import PipelineConfig
    from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)

# How many polls (``poll_seconds`` apart) a challenger's Service or ConfigMap of the same
# name, left by an earlier challenger, gets to be taken by the garbage collector before
# the start gives up: an operator's background delete of a challenger leaves them for a
# moment, and one adopted then would be collected from under the new challenger.
LEFTOVER_POLLS = 15


def _ref(text: str) -> ModelRef:
    name, _, version = text.partition(":")
    return ModelRef(name, version)


class KubernetesRollout(KubeAccess):
    """The challenger beside the champion's Deployment ``deploy.kubernetes.deployment``."""

    def __init__(
        self, cfg: PipelineConfig, store: ArtifactStore, api_client: Any | None = None
    ) -> None:
        self.cfg = cfg
        self.k = cfg.deploy.kubernetes
        self.rcfg = cfg.deploy.rollout
        self.store = store
        self._client = api_client

    @cached_property
    def kc(self) -> Any:
        """The challenger's names; computed when first needed, so that a plain deploy
        asking whether a rollout runs is not refused for names only a challenger's
        suffix would make too long."""
        return challenger_config(self.cfg).deploy.kubernetes

    @cached_property
    def champion(self) -> KubernetesDeployer:
        return KubernetesDeployer(self.cfg, self.store, self.client)

    @cached_property
    def challenger(self) -> KubernetesDeployer:
        return KubernetesDeployer(challenger_config(self.cfg), self.store, self.client, COMPONENT)

    # -- objects ------------------------------------------------------------------------
    def _objects(
        self, champion_template: dict[str, Any], ref: ModelRef, mode: str, percent: float
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(front ConfigMap, the champion's template with it, challenger Deployment and
        Service) for ``ref`` beside the champion's ``champion_template``."""
        champion = template_ref(champion_template) or self._registry_champion(ref)
        if champion == ref:
            raise ServingError(f"{ref} is already the served champion: nothing to roll out")
        sha256 = Registry(self.store, ref.name).info(ref.version)["sha256"]
        state = {
            "mode": mode,
            "percent": percent,
            "champion": str(champion),
            "challenger": str(ref),
        }
        cm = front_config_map(self.cfg, mode, percent)
        template = challenger_template(self.cfg, champion_template, self.store.uri, ref, sha256)
        return (
            cm,
            with_front(champion_template, cm["metadata"]["name"]),
            challenger_deployment(self.cfg, template, state),
            challenger_service(self.cfg),
        )

    def _registry_champion(self, ref: ModelRef) -> ModelRef:
        """The registry's champion of ``ref``'s model (what an applied, unpinned
        Deployment serves)."""
        version = Registry(self.store, ref.name).aliases().get("champion")
        if version is None:
            raise ServingError(
                f"model {ref.name} has no champion to roll {ref} out beside: deploy one first "
                f"(visionline deploy {ref.name}:VERSION --target kubernetes)"
            )
        return ModelRef(ref.name, version)

    def manifests(self, ref: ModelRef, mode: str, percent: float) -> list[dict[str, Any]]:
        """What ``start`` would create and change, beside the registry's champion as the
        config serves it (``--dry-run -o yaml``): the rollout front's ConfigMap, the
        champion's Deployment mounting it, the challenger's Deployment and Service."""
        champion = self._registry_champion(ref)
        sha256 = Registry(self.store, ref.name).info(champion.version)["sha256"]
        _, dep, _ = build_objects(self.cfg, self.store.uri, champion, sha256)
        cm, front, challenger, svc = self._objects(dep["spec"]["template"], ref, mode, percent)
        return [cm, deployment(self.cfg, front), challenger, svc]

    # -- state --------------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        """The rollout in progress (the challenger's Deployment), or None."""
        try:
            challenger = self.challenger
        except ConfigError:
            return None  # names too long for a challenger: none can have been created
        d = challenger._read()
        state = rollout_state(d)
        if state is not None and d is not None:
            state["started"] = d["metadata"].get("creationTimestamp")
            state["uid"] = d["metadata"].get("uid")
        return state

    def last(self) -> dict[str, Any] | None:
        """As ``state``: once ended, nothing of a rollout is left in the cluster."""
        return self.state()

    # -- start and end ------------------------------------------------------------------
    def start(self, ref: ModelRef, mode: str, percent: float) -> dict[str, Any]:
        """Serve ``ref`` as the challenger and point the champion's front at it."""
        current = self.state()
        if current:
            raise ServingError(
                f"a {current['mode']} rollout of {current['challenger']} is in progress: "
                "visionline rollout promote or visionline rollout abort first"
            )
        d = self.champion._read()
        if d is None:
            raise ServingError(
                f"no Deployment {self.k.namespace}/{self.k.deployment} serves a champion: "
                f"deploy one first (visionline deploy {ref.name}:VERSION --target kubernetes)"
            )
        cm, _, dep, svc = self._objects(d["spec"]["template"], ref, mode, percent)
        try:
            with self._call("create", "deployments"):
                created = as_dict(
                    self.client, self.apps.create_namespaced_deployment(self.k.namespace, dep)
                )
        except KubernetesConflictError as e:
            if (other := self.state()) is not None:  # another start got there first
                raise ServingError(
                    f"a {other['mode']} rollout of {other['challenger']} is in progress: "
                    "visionline rollout promote or visionline rollout abort first"
                ) from e
            # no rollout in it: an earlier challenger still being deleted, or not ours
            raise ServingError(
                f"a Deployment {self.k.namespace}/{self.kc.deployment} exists but runs no "
                "rollout (an earlier challenger still being deleted?): start the rollout "
                f"again once kubectl -n {self.k.namespace} get deployment "
                f"{self.kc.deployment} finds none"
            ) from e
        log.info("created Deployment %s/%s serving %s", self.k.namespace, self.kc.deployment, ref)
        try:
            uid = created["metadata"]["uid"]
            self._create_fresh(owned_by(svc, self.kc.deployment, uid))
            self._create_fresh(owned_by(cm, self.kc.deployment, uid))
            self.challenger.wait_rollout()
            self._set_front(lambda t: with_front(t, cm["metadata"]["name"]))
        except Exception as e:
            log.error("the %s rollout of %s did not start (%s): removing it", mode, ref, e)
            try:
                self._take_down(uid=created["metadata"].get("uid"))
            except Exception as cleanup:
                log.error("could not remove the challenger: %s", cleanup)
            raise
        state = {
            **(rollout_state(created) or {}),
            "started": created["metadata"].get("creationTimestamp")
            or datetime.now(UTC).isoformat(),
            "uid": created["metadata"]["uid"],
        }
        log.info("%s rollout of %s beside %s: %g%%", mode, ref, state["champion"], percent)
        return state

    def _create_fresh(self, obj: dict[str, Any]) -> None:
        """Create the challenger's Service or ConfigMap, owned by its new Deployment. One
        of the same name is not reused: it belongs to no challenger now running (there
        is one rollout at a time), so either the garbage collector is about to take it
        (an earlier challenger's, deleted in the background), which it is given
        ``LEFTOVER_POLLS`` polls to do, or it was orphaned, which an operator removes."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        for _ in range(LEFTOVER_POLLS):
            if self._create_if_absent(obj):
                return
            time.sleep(self.k.poll_seconds)
        if self._create_if_absent(obj):
            return
        raise ServingError(
            f"{kind} {self.k.namespace}/{name} already exists and no running challenger owns "
            f"it (left by an earlier one, orphaned?): a challenger using it would lose it to "
            f"the garbage collector or leave it behind. kubectl -n {self.k.namespace} delete "
            f"{kind.lower()} {name}, then start the rollout again"
        )

    def _set_front(self, change: Any) -> None:
        """Patch the champion's template to ``change(template)`` and wait for its pods."""
        d = self.champion._read()
        if d is None or change(d["spec"]["template"]) == d["spec"]["template"]:
            return
        self.champion._patch_current(
            lambda d: {
                "spec": {
                    "template": merge_patch(d["spec"]["template"], change(d["spec"]["template"]))
                }
            }
        )
        self.champion.wait_rollout()

    def _take_down(self, uid: str | None = None) -> None:
        """The champion's plain front back, then the challenger gone. While the plain
        front is not available, the challenger stays: the old fronts still send to it.
        With ``uid``, only the challenger Deployment of that uid is deleted."""
        try:
            self._set_front(without_front)
        except DeploymentError as e:
            raise DeploymentError(
                f"the champion's plain front did not come back ({e}); the challenger is kept "
                "while the rollout's fronts still send to it: see kubectl -n "
                f"{self.k.namespace} rollout status deployment/{self.k.deployment}, then "
                "visionline rollout abort again"
            ) from e
        self._wait_rollout_fronts_gone()
        from kubernetes.client import V1DeleteOptions, V1Preconditions

        options = V1DeleteOptions(
            propagation_policy="Foreground",
            preconditions=V1Preconditions(uid=uid) if uid else None,
        )
        try:
            with self._call("delete", "deployments"):
                self.apps.delete_namespaced_deployment(
                    self.kc.deployment, self.k.namespace, body=options
                )
        except KubernetesNotFoundError:
            return
        except KubernetesConflictError as e:  # the uid precondition: another challenger
            raise RolloutChanged(
                f"the challenger Deployment {self.k.namespace}/{self.kc.deployment} is not the "
                f"one this rollout created (uid {uid}): left in place"
            ) from e
        log.info("deleted Deployment %s/%s and its Service", self.k.namespace, self.kc.deployment)

    def end(
        self, action: str, reason: str = "", expected: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Take the challenger out (the champion's front first) and record why. With
        ``expected`` (a state read earlier), only if the rollout is still that one: a
        promote and the watchdog's rollback may act on the same rollout at once."""
        state = self._claim(action, expected)
        self._take_down(uid=state.get("uid"))
        state.update(
            active=False, ended=datetime.now(UTC).isoformat(), outcome=action, reason=reason
        )
        log.warning(
            "%s rollout of %s ended (%s): %s", state["mode"], state["challenger"], action, reason
        )
        return state

    def _claim(self, action: str, expected: dict[str, Any] | None) -> dict[str, Any]:
        """Mark the rollout as being ended by ``action`` (an annotation written with the
        resourceVersion it was read at), before anything is taken down; its state. With
        ``expected``, only the rollout read then, and only when no one else is ending it
        (a promote and a watchdog's rollback); without (an operator's abort), a claim
        left by an ender that died is taken over."""
        claimed: dict[str, Any] = {}

        def claim(current: dict[str, Any]) -> dict[str, Any]:
            state = rollout_state(current)
            if state is None:
                raise ServingError(self._none())
            state |= {
                "started": current["metadata"].get("creationTimestamp"),
                "uid": current["metadata"].get("uid"),
            }
            if expected is not None and not same_rollout(state, expected):
                raise RolloutChanged(
                    f"the rollout of {expected['challenger']} is no longer the one in "
                    f"progress (now {state['challenger']}, started {state['started']}): "
                    "left as it is"
                )
            if expected is not None and state["ending"]:
                raise RolloutChanged(
                    f"the rollout of {state['challenger']} is already being ended "
                    f"({state['ending']['action']} since {state['ending']['time']}): "
                    "left to it"
                )
            claimed.update(state)
            mark = {"action": action, "time": datetime.now(UTC).isoformat()}
            return {"metadata": {"annotations": {ENDING: json.dumps(mark, sort_keys=True)}}}

        try:
            self.challenger._patch_current(claim)
        except DeploymentError as e:
            if self.state() is None:  # gone between the read and the patch
                raise ServingError(self._none()) from e
            raise
        return claimed

    def _none(self) -> str:
        return (
            f"no rollout is in progress on Kubernetes (no Deployment "
            f"{self.k.namespace}/{self.kc.deployment})"
        )

    def _rollout_front_pods(self) -> list[str]:
        """Champion pods, terminating ones included, that run the rollout front: they
        send the challenger its share and log the rollout's requests (a rolled-out
        Deployment's status counts no terminating pod)."""
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(self.k).items())
        with self._call("list", "pods"):
            items = self.core.list_namespaced_pod(self.k.namespace, label_selector=selector)
        pods = as_dict(self.client, items).get("items") or []
        return [p["metadata"]["name"] for p in pods if front_of({"spec": p.get("spec") or {}})]

    def _wait_rollout_fronts_gone(self) -> None:
        """Until the last old front has drained: it keeps answering (and sending the
        challenger its share) through its preStop drain, and the challenger's Service
        must outlive it. Bounded by the grace period; after it the kubelet kills them."""
        limit = self.k.termination_grace_period_seconds + 30
        deadline = time.monotonic() + limit
        while (left := self._rollout_front_pods()) and time.monotonic() < deadline:
            time.sleep(self.k.poll_seconds)
        if left:
            log.warning(
                "pods %s still run the rollout front after %d s; removing the challenger",
                ", ".join(left),
                limit,
            )

    # -- the verdict --------------------------------------------------------------------
    def _front_logs(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The rollout's request log from the front containers of the champion pods that
        run the rollout front, and where it came from."""
        records: list[dict[str, Any]] = []
        read, unread = [], {}
        for name in self._rollout_front_pods():  # a plain front logs no rollout line
            try:
                with self._call("get", "pods/log"):
                    resp = self.core.read_namespaced_pod_log(
                        name, self.k.namespace, container=PROXY, _preload_content=False
                    )
                records += parse_request_log(resp.data.decode(errors="replace"))
                read.append(name)
            except KubernetesApiError as e:
                unread[name] = str(e)
        return records, {"pods": read, "unreadable": unread, "lines": len(records)}

    def records(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        return self._front_logs()[0]

    def report(self, state: dict[str, Any] | None = None) -> dict[str, Any]:
        state = state or self.state()
        if state is None:
            raise ServingError(self._none())
        records, source = self._front_logs()
        report = rollout_report(
            self.store,
            _ref(state["champion"]),
            _ref(state["challenger"]),
            datetime.fromisoformat(state["started"].replace("Z", "+00:00")),
            records,
            margins(self.rcfg),
        )
        report["request_log"] = source
        report["objects"] = self.describe()
        return report

    def describe(self) -> list[str]:
        """What the rollout consists of in the cluster now, in operator words."""
        ns = self.k.namespace
        ch, champ = self.challenger.status(), self.champion.status()
        lines = [
            f"challenger: Deployment {ns}/{self.kc.deployment} serves {ch.model} ({ch.detail})"
        ]
        try:
            with self._call("get", "services"):
                svc = as_dict(self.client, self.core.read_namespaced_service(self.kc.service, ns))
            lines.append(
                f"            Service {ns}/{self.kc.service} at "
                f"{svc['spec'].get('clusterIP')}:{self.cfg.serve.inference_port}"
            )
        except KubernetesNotFoundError:
            lines.append(f"            Service {ns}/{self.kc.service} is missing")
        d = self.champion._read()
        front = front_of(d["spec"]["template"]) if d else None
        how = f"the rollout front (ConfigMap {front})" if front else "its plain front (no share)"
        lines.append(
            f"champion:   Deployment {ns}/{self.k.deployment} serves {champ.model} through "
            f"{how} ({champ.detail})"
        )
        return lines

    def promote(self, force: bool = False) -> tuple[dict[str, Any], DeployResult | None]:
        """As the local rollout's: the champion's Deployment is then retargeted to the
        challenger's version, checked and promoted as ``visionline deploy`` does."""
        state = self.state()
        if state is None:
            raise ServingError(self._none())
        report = self.report(state)
        verdict = report["_verdict"]
        if not verdict.promotable and not force:
            return report, None
        self.end("promote", "; ".join(c.detail for c in verdict.checks), expected=state)
        return report, deploy_checked(self.champion, self.store, _ref(state["challenger"]))
