"""A Kubernetes API over HTTP for tests, driven by the official client.

``Cluster`` (cluster.py) serves ``ApiServer`` (api_server.py), kmock's
``KubernetesEmulator`` (an in-memory API server), from a background thread, and adds
what our code relies on from a real API server:

- server-filled metadata (uid, resourceVersion, generation, creationTimestamp) and a
  generation bump when a spec changes;
- label and field selectors on lists (objects.py);
- JSON merge patches (kmock's own patch semantics: ``null`` deletes, lists replace);
- deletion as a real cluster does it (gc.py), a ``preconditions.uid`` that does not
  match refused with 409: ``Foreground`` leaves the owner visible
  with a ``deletionTimestamp`` and the ``foregroundDeletion`` finalizer until its
  blocking dependents are gone, ``Background`` deletes the dependents after the owner,
  ``Orphan`` (the API default for Jobs) strips their ``ownerReferences``; an object
  whose owners are all gone is garbage-collected; a pod on a node is deleted
  gracefully (its kubelet stops it, then confirms); finalizers hold objects;
- pod logs (``pods/<name>/log`` with follow, timestamps, tailLines, sinceSeconds; logs.py);
- RBAC as the API server evaluates it (rbac.py): each request carries a service-account
  token, and is authorized against the Roles and RoleBindings of the rendered
  ``k8s/overlays/local``; ``api_client()`` is the pipeline's account (the code under test),
  ``api_client(as_=...)`` another, ``admin_client()`` the test's own setup and the
  controllers; ``deny("create", "jobs")`` refuses a verb on top of that;
- every object written is validated against the real 1.31 schemas (kubernetes-validate,
  strict) and refused with 422 when it does not validate, so nothing our code sends can
  be silently wrong.

``JobController`` (jobs.py) plays the Job controller, and its ``Kubelet`` (kubelet.py) a
one-node kubelet: it creates pods for Jobs, applies their ``podFailurePolicy``,
``backoffLimit``, ``activeDeadlineSeconds`` and ``suspend``, and either runs a pod's
container command as a real local process (its env resolved from the pod spec, Secrets
included) or gives the pod a scripted ``Fate`` (OOMKilled, evicted, image pull failure,
unschedulable); a deleted pod gets SIGTERM, SIGKILL at its grace period, and is gone
once it stopped (``Fate.stop_seconds`` makes a shutdown slow). Its containers run
(runtime.py) as PID 1 of their own PID namespace, under the image's ENTRYPOINT read from
the Dockerfile, with ``command``/``args`` and ``$(VAR)`` expansion, ``envFrom`` and the
downward API (downward.py) as the kubelet resolves them; signals go to PID 1.
``JobSetController`` (jobsets.py) plays the JobSet controller (v0.8): it serves the
JobSet API (jobset_crd.py: the CRD's schema and the webhook's checks), makes each
JobSet's Jobs, labelled as the real one labels them, and their headless Service, and
applies its success and failure policies, restarting the group by recreating its Jobs;
the Job controller above runs those Jobs. Without it a cluster answers 404 for jobsets,
as one without the CRD does. ``DeploymentController`` (deployments.py) rolls Deployments out in one step, with
scripted pods. The strict alternative for serving: ``RolloutController``
(replicasets.py) rolls them through ReplicaSets (maxSurge, maxUnavailable, probes,
progressDeadlineSeconds) and ``ServingKubelet`` (servingpods.py) runs their pods for
real, each in its own network namespace (sandbox.py, podfs.py), under the kubelet's
termination sequence; ``kubectl_apply`` (apply.py) applies manifests as a client-side
``kubectl apply`` does. The controllers talk to the emulator only through the API, like
the real ones.
"""

from .api_server import ApiServer
from .cluster import Cluster, dumps, job_from_requests
from .deployments import DeploymentController
from .jobs import JobController
from .jobsets import JobSetController
from .kubelet import Fate, Kubelet
from .logs import PodLog
from .objects import SCHEMA_VERSION, now_rfc3339, validate
from .rbac import ADMIN, PIPELINE, WORKER, Rbac

__all__ = [
    "ADMIN",
    "PIPELINE",
    "SCHEMA_VERSION",
    "WORKER",
    "ApiServer",
    "Cluster",
    "DeploymentController",
    "Fate",
    "JobController",
    "JobSetController",
    "Kubelet",
    "PodLog",
    "Rbac",
    "dumps",
    "job_from_requests",
    "now_rfc3339",
    "validate",
]
