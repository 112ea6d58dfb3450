"""What ties a training Job to the flow run that started it, so that cancelling the flow
run stops the training run however the flow's process ends.

- Politely (Prefect's cancel, SIGTERM to the flow-run pod, deletion of the flow-run Job
  while its process still runs): ``cancel_on_exit`` around the wait deletes the Job
  (foreground: its pods go first) when the wait ends by a signal or an interrupt, not
  by the run's own end.
- Outright (the flow's process SIGKILLed, its node lost): the training Job carries an
  ``ownerReference`` to the flow run's own Job (else its pod), read from the downward
  API (``VISIONLINE_OWNER_*``, set in k8s/prefect/base-job-template.json), so the
  cluster's garbage collector deletes it once the flow-run Job or pod is gone.

No ``blockOwnerDeletion``: the flow-run Job's deletion need not wait for a training Job
(and setting it needs ``update`` on the owner's finalizers where the
OwnerReferencesPermissionEnforcement admission plugin is on). An owner in another
namespace cannot own (the garbage collector would take the owner for gone and delete the
training Job at once): then no reference, and a warning says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any, Protocol

from visionline.compute import waiting_for
from visionline.errors import EXIT_PREEMPTED

log = logging.getLogger(__name__)

# The downward API's values in the flow-run pod (k8s/prefect/base-job-template.json).
OWNER_NAMESPACE = "VISIONLINE_OWNER_NAMESPACE"
OWNER_POD_NAME = "VISIONLINE_OWNER_POD_NAME"
OWNER_POD_UID = "VISIONLINE_OWNER_POD_UID"
OWNER_JOB_NAME = "VISIONLINE_OWNER_JOB_NAME"  # the pod's label batch.kubernetes.io/job-name
OWNER_JOB_UID = "VISIONLINE_OWNER_JOB_UID"  # ... and batch.kubernetes.io/controller-uid


def flow_run_owner(namespace: str, env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The ownerReference a training Job in ``namespace`` gets: the flow run's Job when
    the pod knows it (its controller's labels), else the flow run's pod; None outside a
    pod, or when the flow run runs in another namespace."""
    env = os.environ if env is None else env
    where = env.get(OWNER_NAMESPACE, "")
    if env.get(OWNER_JOB_NAME) and env.get(OWNER_JOB_UID):
        ref = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": env[OWNER_JOB_NAME],
            "uid": env[OWNER_JOB_UID],
        }
    elif env.get(OWNER_POD_NAME) and env.get(OWNER_POD_UID):
        ref = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": env[OWNER_POD_NAME],
            "uid": env[OWNER_POD_UID],
        }
    else:
        return None
    if where and where != namespace:
        log.warning(
            "the flow run's %s %s/%s cannot own training Jobs in namespace %s (owners must "
            "share the namespace): a flow run killed outright leaves its training Job "
            "running; run the flow in namespace %s",
            ref["kind"],
            where,
            ref["name"],
            namespace,
            namespace,
        )
        return None
    return ref


class _Cancellable(Protocol):
    run_id: str

    def cancel(self) -> None: ...


class Terminated(SystemExit):
    """SIGTERM while waiting, where no one else handles it: exits with ``EXIT_PREEMPTED``
    once the run is cancelled."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(EXIT_PREEMPTED)


@contextlib.contextmanager
def cancel_on_exit(run: _Cancellable) -> Iterator[None]:
    """While waiting for ``run``: an interrupt (SIGTERM, Prefect's TerminationSignal,
    KeyboardInterrupt, a task's cancellation) cancels it before it propagates. SIGTERM
    gets a handler here only in the main thread and only where none is installed (a
    Prefect flow process has its own, which raises TerminationSignal in the wait)."""
    previous: Any = None
    mine = threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) in (signal.SIG_DFL, signal.SIG_IGN, None)
    if mine:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with waiting_for(run):
            yield
    except Exception:
        raise  # the run's own failure, a timeout, an API error: not a cancellation
    except BaseException:
        log.warning("training run %s: interrupted while waiting: cancelling it", run.run_id)
        run.cancel()
        raise
    finally:
        if mine:
            signal.signal(signal.SIGTERM, previous)
