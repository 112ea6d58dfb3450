"""Training as a Kubernetes Job (``compute.backend: kubernetes``).

A run becomes one ``batch/v1`` Job built from the config (``compute.kubernetes``):
the trainer image runs ``python -m visionline.training --config URI --run-id ID`` (under
``torchrun`` with one process per GPU when a pod has more than one), with
``nvidia.com/gpu`` limits, node selector and tolerations, S3 credentials by reference to
a Secret, and the ``app.kubernetes.io/*`` labels plus the run id and model.

Failures are the Job controller's to count, with rules that match what the trainer does:

- ``restartPolicy: Never`` and ``podReplacementPolicy: Failed``: a replacement pod starts
  only once the old one has fully terminated, so two pods of a run never write the same
  checkpoints;
- ``podFailurePolicy``: a pod that fails because it was disrupted (``DisruptionTarget``:
  preemption, eviction, node drain) is ignored, not counted, and its replacement resumes
  from the last checkpoint (the trainer checkpoints at the next batch boundary on
  SIGTERM); exit code 78 (a configuration error) fails the Job at once, since a retry
  cannot fix it; anything else is retried up to ``backoffLimit``;
- ``activeDeadlineSeconds`` bounds the run, ``ttlSecondsAfterFinished`` cleans it up.

``KubernetesRun`` watches the Job by polling it and its pods, streams each pod's log into
the ``visionline.compute.kubernetes`` loggers (the flow run's log), and on failure says
why in the words an operator acts on. ``cancel()`` deletes the Job with foreground
propagation, so its pods go too (the API's default for Jobs orphans them); the Job stays,
being deleted, until they have stopped, and submitting the same run meanwhile waits for
it to go before creating it anew.

More than one node (``nodes > 1``): an Indexed Job whose pods find each other through a
headless Service (``<job>-0.<service>`` hosts the rendezvous; created after the Job and
owned by it, so it is garbage-collected with it), ``torchrun`` with the elastic c10d
rendezvous and ``--max-restarts``: a lost node's pod is replaced for its index (retries
are per index, ``backoffLimitPerIndex``, and a disruption costs none), it rejoins, and
the whole group restarts from the last checkpoint while the surviving pods stay;
``compute.group_timeout_seconds`` bounds how long survivors wait (docs/kubernetes.md).

``compute.kubernetes.kind: jobset`` (more than one node, a cluster running the JobSet
controller): the same Indexed Job wrapped in a JobSet (``jobset``), which makes the Job
and its headless Service and restarts the whole group when the Job fails for good. It
is submitted, watched, explained and cancelled as the Job is, through ``workloads``
(the kind's API calls and status words); the pipeline's Role then needs the component
``k8s/components/jobset``.

The rooms: ``manifest`` (the objects), ``jobset`` (the JobSet), ``diagnosis`` (pod and
Job status in operator words), ``workloads`` (Job or JobSet on the API), ``watch`` (the
run), ``backend`` (submit).
"""

from visionline.compute.kubernetes.backend import KubernetesBackend
from visionline.compute.kubernetes.diagnosis import explain_failure, pod_problem
from visionline.compute.kubernetes.manifest import (
    CONTAINER,
    build_job,
    build_manifests,
    build_rendezvous_service,
    job_name,
    trainer_command,
)
from visionline.compute.kubernetes.watch import KubernetesRun

__all__ = [
    "CONTAINER",
    "KubernetesBackend",
    "KubernetesRun",
    "build_job",
    "build_manifests",
    "build_rendezvous_service",
    "explain_failure",
    "job_name",
    "pod_problem",
    "trainer_command",
]
