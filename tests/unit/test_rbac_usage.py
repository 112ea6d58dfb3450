"""Every verb in every Role is one a code path uses, and every request a code path makes
in the cluster is granted (issue 18, defect 14). What the code needs is read from the code
(tests/support/rbac_usage.py: each Kubernetes client call, as the request it sends), what
the Roles grant from the rendered overlay; the two are compared, with the few differences
that are meant listed here with their reasons.

visionline-pipeline runs our code (flow runs, `visionline train/deploy` in a pod);
visionline-worker runs prefect-kubernetes' worker and its observer at the pinned version,
whose calls are read the same way from the installed package; the trainer and server
accounts have no Role (their pods mount no token)."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import prefect_kubernetes
import pytest

from tests.support.manifests import REPO, find, render, render_with, which
from tests.support.rbac_usage import by_triple, granted, uses

pytestmark = pytest.mark.skipif(
    which("kubectl") is None, reason="kubectl not found: run `make tools`"
)

SRC = REPO / "src" / "visionline"
# Where our code talks to the API server: the modules flow runs use for training Jobs and
# the serving Deployment. Code that runs in the trainer or server pods must not (no token).
PIPELINE_MODULES = ("kube.py", "compute/kubernetes/", "serving/kubernetes/")
# Requests the code makes that the pipeline Role does not grant, on purpose. None since
# rollouts (issue 20): the challenger's Deployment is created and deleted, and the rollout
# front's ConfigMap created, by the pipeline. The first deploy's create and its rollback's
# delete of the champion (where no Deployment was applied, with an operator's kubeconfig)
# stay out of reach by name: the Role limits get, patch and delete to named Deployments,
# which tests/integration/test_k8s_challenger.py exercises on the strict cluster.
NOT_GRANTED: dict[tuple[str, str, str], str] = {}
# Granted by the optional component k8s/components/jobset only, which an operator adds
# where the cluster runs the JobSet controller and the config says kind: jobset: the
# JobSet's own calls (its Jobs and pods are read with the base's verbs).
JOBSET_COMPONENT = {
    ("jobset.x-k8s.io", "jobsets", verb): "compute/kubernetes/workloads.py"
    for verb in ("create", "get", "delete")
}
WORKER_CODE = ("worker.py", "observer.py")  # what `prefect worker start --type kubernetes` runs
# The worker's Secret calls, made only with CREATE_SECRET_FOR_API_KEY or
# STORE_ENV_AS_SECRET, which the worker Deployment does not set: it names the existing
# Secret (tests/unit/test_flow_run_api_key.py).
WORKER_SECRETS = "secrets"
# The observer lists pods cluster-wide only without OBSERVER_NAMESPACES, which the worker
# Deployment sets to its own namespace ("cluster:" requests are left out below).
WORKER_SETTINGS = {
    "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": "visionline",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME": "visionline-prefect",
}
# kopf, under the observer: the resources of its event handlers are listed and watched,
# and what the handlers log at INFO and above is posted as Events on the object.
KOPF_POSTS = ("", "events", "create")


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render("k8s/overlays/local")


@pytest.fixture(scope="module")
def with_jobset() -> list[dict]:
    return render_with("k8s/overlays/local", ("jobset",))


def _role(objects: list[dict], name: str) -> set[tuple[str, str, str]]:
    return granted(find(objects, "Role", name))


def _pipeline_uses() -> dict:
    files = sorted(SRC.rglob("*.py")) + sorted((REPO / "flows").rglob("*.py"))
    return by_triple(uses(files, REPO))


def test_pipeline_role_grants_exactly_what_the_code_calls(with_jobset):
    """With every optional component that adds to the Role (the next test: which)."""
    used = _pipeline_uses()
    role = _role(with_jobset, "visionline-pipeline")
    for triple, module in NOT_GRANTED.items():
        assert triple in used, f"{triple} is no longer used: drop it from NOT_GRANTED"
        assert all(module in where for where in used[triple]), (triple, used[triple])
    unused = role - used.keys()
    assert not unused, f"the pipeline Role grants what no code calls: {sorted(unused)}"
    missing = {t: used[t] for t in used.keys() - role - NOT_GRANTED.keys()}
    assert not missing, f"the code calls what the pipeline Role does not grant: {missing}"


def test_jobset_verbs_come_with_the_jobset_component_only(objects, with_jobset):
    base = _role(objects, "visionline-pipeline")
    assert _role(with_jobset, "visionline-pipeline") - base == set(JOBSET_COMPONENT)
    assert not base & set(JOBSET_COMPONENT)
    used = _pipeline_uses()
    for triple, module in JOBSET_COMPONENT.items():
        assert used.get(triple), f"{triple} is no longer used: drop it from the component"
        assert all(module in where for where in used[triple]), (triple, used[triple])
    # nothing else changes: the worker's Role, the bindings
    others = [o for o in objects if o["metadata"]["name"] != "visionline-pipeline"]
    assert others == [o for o in with_jobset if o["metadata"]["name"] != "visionline-pipeline"]


def test_only_the_pipeline_side_calls_the_api():
    for triple, where in _pipeline_uses().items():
        for place in where:
            assert place.startswith("src/visionline/"), (triple, place)
            module = place.split(":")[0].removeprefix("src/visionline/")
            assert module.startswith(PIPELINE_MODULES), (triple, place)


def test_worker_role_grants_exactly_what_prefect_kubernetes_calls(objects):
    package = Path(prefect_kubernetes.__file__).parent
    files = [package / name for name in WORKER_CODE]
    used = set(by_triple(uses(files, package)))
    used = {t for t in used if t[1] != WORKER_SECRETS and not t[1].startswith("cluster:")}
    observed = _kopf_resources(package / "observer.py")
    assert observed == {("batch", "jobs"), ("", "pods")}
    used |= {(group, resource, verb) for group, resource in observed for verb in ("list", "watch")}
    used.add(KOPF_POSTS)
    assert _role(objects, "visionline-worker") == used
    worker = find(objects, "Deployment", "visionline-prefect-worker")["spec"]["template"]
    env = {e["name"]: e.get("value") for e in worker["spec"]["containers"][0]["env"]}
    assert WORKER_SETTINGS.items() <= env.items()


def _kopf_resources(path: Path) -> set[tuple[str, str]]:
    """(group, plural) of every ``kopf.on.event(...)`` handler in the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        f = node.func if isinstance(node, ast.Call) else None
        if (
            isinstance(f, ast.Attribute)
            and f.attr == "event"
            and isinstance(f.value, ast.Attribute)
            and f.value.attr == "on"
        ):
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            found.add((args[0] if len(args) == 3 else "", args[-1]))
    return found


def test_only_the_worker_and_pipeline_accounts_have_roles(objects):
    bound = {
        (b["roleRef"]["name"], s["name"])
        for b in objects
        if b["kind"] == "RoleBinding"
        for s in b["subjects"]
    }
    assert bound == {
        ("visionline-worker", "visionline-worker"),
        ("visionline-pipeline", "visionline-pipeline"),
    }


def test_the_reading_sees_each_kind_of_call(tmp_path):
    """The scanner is not vacuous: calls, methods passed to a watch, subresources,
    collections, and custom objects by their constants all come out as the API server
    authorizes them."""
    code = tmp_path / "sample.py"
    code.write_text(
        textwrap.dedent(
            """
            from kubernetes import client, watch
            GROUP = "jobset.x-k8s.io"
            core, batch = client.CoreV1Api(), client.BatchV1Api()
            custom = client.CustomObjectsApi()
            batch.create_namespaced_job("ns", {})
            core.read_namespaced_pod_log("p", "ns", follow=True)
            core.list_namespaced_pod("ns", watch=True)
            watch.Watch().stream(core.list_namespaced_event, "ns")
            core.delete_collection_namespaced_pod("ns")
            remove = core.delete_namespaced_service
            custom.create_namespaced_custom_object(GROUP, "v1alpha2", "ns", "jobsets", {})
            client.VersionApi().get_code()
            core.list_node()
            """
        )
    )
    assert set(by_triple(uses([code], tmp_path))) == {
        ("batch", "jobs", "create"),
        ("", "pods/log", "get"),
        ("", "pods", "watch"),
        ("", "events", "watch"),
        ("", "pods", "deletecollection"),
        ("", "services", "delete"),
        ("jobset.x-k8s.io", "jobsets", "create"),
        ("", "cluster:nodes", "list"),
    }
