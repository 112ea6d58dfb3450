"""Serving on Kubernetes (``deploy.target: kubernetes``): one TorchServe Deployment behind
a Service, rolled to a model version by patching its pod template.

Each pod (all objects built in Python, from ``deploy.kubernetes`` and ``serve``):

- init container ``fetch-model`` (``python -m visionline.serving.fetch``): downloads the
  ``.mar`` of the version the template pins (store, name:version and sha256 in its
  environment, ``VISIONLINE_PINNED_*``, which the k8s/ manifest never names, so a
  Deployment revision always means the same bytes and a re-apply leaves the pin),
  checks its sha256,
  and writes TorchServe's ``config.properties`` from the serve settings (ConfigMap);
- container ``torchserve``: TorchServe in the foreground on the pod's loopback, its own
  token auth off; readiness is a READY worker of the model (``serving.probe``), not an
  open port;
- container ``auth-proxy``: nginx (``serving.nginx``), the only thing listening on the
  pod's network: REST 8080 and gRPC 7070 with one credential from a Secret, metrics 8082.

A terminating pod loses no request: nginx's preStop (``serving.prestop``) keeps
answering for ``drain_seconds``, then quits gracefully, waiting ``inflight_seconds``;
TorchServe's preStop sleeps both before its SIGTERM. Rollouts surge on CPU and roll one
replica at a time on GPU; ``progressDeadlineSeconds`` is the startup probe's budget plus
a node and image pull allowance.

``deploy(ref)`` patches the template (a JSON merge patch, with the template it replaces
kept in an annotation and the resourceVersion as a precondition), waits for the rollout
(observed generation, updated and available replicas, before a deadline), and returns a
client that reaches the Service with the credential. ``deploy_checked`` then runs the
smoke and parity checks through that client and calls ``rollback()`` on any failure,
which restores the previous template, so the champion alias never moves.

The ConfigMap holding the serve settings and the nginx config is named after its
content (as kustomize's generator does) and immutable: a settings change is a new
ConfigMap and a new template, and an old template still finds its own.

The rooms: ``containers`` (one builder per container), ``objects`` (ConfigMap, pod
template, Deployment, Service, retarget), ``deployer`` (apply, wait, rollback, status),
``challenger`` (a rollout's objects: the challenger's Deployment and Service, the
champion's rollout front) and ``rollout`` (a shadow or canary rollout: start, status, end).
"""

from visionline.serving.kubernetes.deployer import KubernetesDeployer
from visionline.serving.kubernetes.objects import (
    MODEL,
    PREVIOUS,
    SHA256,
    build_objects,
    config_map,
    deployment,
    pod_template,
    retarget,
    service,
    template_ref,
)

__all__ = [
    "MODEL",
    "PREVIOUS",
    "SHA256",
    "KubernetesDeployer",
    "build_objects",
    "config_map",
    "deployment",
    "pod_template",
    "retarget",
    "service",
    "template_ref",
]
