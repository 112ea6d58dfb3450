"""k8s/: every kustomization renders with kubectl, validates strictly against the
Kubernetes 1.31 schemas, and keeps the promises docs/kubernetes.md makes about it (what the
Service exposes, no secret values, least privilege, the pod security settings)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.support.manifests import (
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    OVERLAYS,
    REPO,
    containers,
    find,
    pod_spec,
    render,
    sh,
    which,
)
from tests.support.netpol import selects

pytestmark = pytest.mark.skipif(
    which("kubectl") is None, reason="kubectl not found: run `make tools`"
)

SERVING = "visionline-torchserve"
GET_PATCH_DELETE = {"get", "patch", "delete"}  # the challenger: patched as being ended, deleted
DEPLOYMENT_VERBS = {(SERVING,): {"get", "patch"}, (f"{SERVING}-challenger",): GET_PATCH_DELETE}
BASE = REPO / "k8s" / "base"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {k: render(k) for k in KUSTOMIZATIONS}


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(kustomization, rendered):
    # The check docs/kubernetes.md shows, as typed there.
    proc = sh(
        f"kubectl kustomize {kustomization} "
        f"| kubernetes-validate -k {KUBERNETES_VERSION} --strict -"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = re.findall(r"passed for resource", proc.stdout + proc.stderr)
    assert len(passed) == len(rendered[kustomization])


def test_strict_validation_catches_a_misplaced_field(tmp_path):
    """The check is real: the fault the work pool template used to have (completions
    inside the pod spec) fails it."""
    job = find(render("k8s/training"), "Job", "visionline-train-multi")
    job["spec"]["template"]["spec"]["completions"] = 1
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps(job))
    proc = sh(f"kubernetes-validate -k {KUBERNETES_VERSION} --strict {bad}")
    assert proc.returncode != 0
    assert "completions" in proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_public_service_exposes_only_inference(overlay, rendered):
    objects = rendered[overlay]
    pod = find(objects, "Deployment", SERVING)["spec"]["template"]
    services = [
        s
        for s in objects
        if s["kind"] == "Service"
        and all(pod["metadata"]["labels"].get(k) == v for k, v in s["spec"]["selector"].items())
    ]
    assert [s["metadata"]["name"] for s in services] == [SERVING]
    ports = services[0]["spec"]["ports"]
    assert sorted(p["port"] for p in ports) == [7070, 8080]
    assert services[0]["spec"]["type"] == "ClusterIP"
    # Each Service port lands on the auth front, never on TorchServe.
    named = {
        p["name"]: (c["name"], p["containerPort"])
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
    }
    for p in ports:
        assert named[p["targetPort"]] == ("auth-proxy", p["port"])
    torchserve = next(c for c in pod["spec"]["containers"] if c["name"] == "torchserve")
    assert "ports" not in torchserve


def _serving_spec(rendered, overlay="k8s/overlays/local") -> dict:
    return find(rendered[overlay], "Deployment", SERVING)["spec"]["template"]["spec"]


def _container(spec: dict, name: str) -> dict:
    return next(c for c in containers(spec) if c["name"] == name)


def _loopback_ports(spec: dict) -> dict[str, int]:
    """Where the pod's probes reach TorchServe (its loopback listeners)."""
    ts = _container(spec, "torchserve")
    ready = ts["readinessProbe"]["exec"]["command"]
    live = ts["livenessProbe"]["exec"]["command"]
    addr = {
        "management": ready[ready.index("--management") + 1],
        "inference": live[live.index("--inference") + 1],
    }
    for url in addr.values():
        assert url.startswith("http://127.0.0.1:"), url
    return {k: int(v.rsplit(":", 1)[1]) for k, v in addr.items()}


def test_the_front_forwards_to_torchserve_on_loopback_and_never_to_management(rendered):
    nginx = (BASE / "serving" / "nginx.conf").read_text()
    spec = _serving_spec(rendered)
    ports = _loopback_ports(spec)
    forwards = re.findall(r"(?:proxy|grpc)_pass (?:http|grpc)://([\d.]+):(\d+)", nginx)
    assert forwards and all(host == "127.0.0.1" for host, _ in forwards)
    forwarded = {int(port) for _, port in forwards}
    assert ports["inference"] in forwarded
    assert ports["management"] not in forwarded
    # Everything the front forwards, except metrics, passes the credential check first.
    for server in nginx.split("server {")[1:]:
        for location in re.findall(r"location [^{]*\{(.*?)\n        \}", server, re.S):
            if "_pass " in location and "/metrics" not in location:
                assert "auth_request /_visionline_auth;" in location, location
    for check in re.findall(r"location = /_visionline_auth \{(.*?)\n        \}", nginx, re.S):
        assert '$visionline_token = ""' in check
        assert "!-f /etc/visionline/credentials/$visionline_token" in check


def test_serve_settings_match_the_pod(rendered):
    """serve.json (what the init container turns into TorchServe's config) and the pod
    agree on the public ports."""
    settings = json.loads((BASE / "serving" / "serve.json").read_text())
    front = _container(_serving_spec(rendered), "auth-proxy")
    ports = {p["name"]: p["containerPort"] for p in front["ports"]}
    assert ports == {
        "http": settings["inference_port"],
        "grpc": settings["grpc_inference_port"],
        "metrics": settings["metrics_port"],
    }
    from visionline.config import ServeConfig

    ServeConfig.model_validate(settings)  # a valid `serve:` section


def test_auth_front_mounts_the_credential_secret(rendered):
    spec = _serving_spec(rendered)
    front = _container(spec, "auth-proxy")
    mounts = {m["mountPath"]: m["name"] for m in front["volumeMounts"]}
    volume = next(v for v in spec["volumes"] if v["name"] == mounts["/etc/visionline/credentials"])
    assert volume["secret"]["secretName"] == "visionline-inference-credentials"
    # Mounted as a directory, not with subPath: subPath mounts never see a rotation.
    assert all("subPath" not in m for c in containers(spec) for m in c.get("volumeMounts", []))
    # The token never reaches TorchServe's container.
    torchserve = next(c for c in spec["containers"] if c["name"] == "torchserve")
    assert mounts["/etc/visionline/credentials"] not in {
        m["name"] for m in torchserve["volumeMounts"]
    }


def test_nginx_listeners_match_the_container_ports(rendered):
    nginx = (BASE / "serving" / "nginx.conf").read_text()
    listens = sorted(int(p) for p in re.findall(r"^\s*listen [\d.]+:(\d+)", nginx, re.M))
    front = _container(_serving_spec(rendered), "auth-proxy")
    assert listens == sorted(p["containerPort"] for p in front["ports"])


@pytest.mark.skipif(
    which("nginx") is None,
    reason="nginx not installed (make test installs it: tools/system-deps.sh)",
)
def test_nginx_accepts_the_config(tmp_path):
    # /tmp/nginx is an emptyDir in the pod; here a directory of the test's.
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        (BASE / "serving" / "nginx.conf").read_text().replace("/tmp/nginx", str(tmp_path))
    )
    proc = subprocess.run(
        ["nginx", "-e", "stderr", "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


def test_metrics_only_to_the_scraper(rendered):
    objects = rendered["k8s/overlays/local"]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = find(objects, "NetworkPolicy", "visionline-default-deny")
    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    serving = find(objects, "NetworkPolicy", SERVING)
    rules = serving["spec"]["ingress"]
    open_ports = sorted(p["port"] for r in rules if "from" not in r for p in r["ports"])
    assert open_ports == [7070, 8080]
    metrics = [r for r in rules if any(p["port"] == 8082 for p in r["ports"])]
    assert len(metrics) == 1 and metrics[0]["from"][0]["podSelector"]["matchLabels"]
    assert metrics[0]["from"][0]["namespaceSelector"]["matchLabels"]
    # No other policy opens the serving pods.
    pod = find(objects, "Deployment", SERVING)["spec"]["template"]["metadata"]["labels"]
    for p in policies:
        if p is not serving and p["spec"].get("ingress"):
            assert not selects(p["spec"]["podSelector"], pod), p["metadata"]["name"]


SECRETISH = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY", re.I)
# Settings that name a Secret and its key: tests/unit/test_flow_run_api_key.py.
SECRET_REFERENCES = {
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME": "visionline-prefect",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_KEY": "PREFECT_API_KEY",
}


def _env_values(spec: dict):
    for c in containers(spec):
        for e in c.get("env", []):
            yield c["name"], e


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_secret_values(kustomization, rendered):
    for obj in rendered[kustomization]:
        assert obj["kind"] != "Secret", "Secrets are created by the operator, never shipped"
        if obj["kind"] == "ConfigMap":
            for key in obj["data"]:
                assert not SECRETISH.search(key), f"ConfigMap {obj['metadata']['name']}: {key}"
        spec = pod_spec(obj)
        if spec is None:
            continue
        for container, e in _env_values(spec):
            if e["name"] in SECRET_REFERENCES:
                assert e["value"] == SECRET_REFERENCES[e["name"]]
                continue
            if SECRETISH.search(e["name"]):
                assert "value" not in e, f"{obj['metadata']['name']}/{container}: {e['name']}"
                assert "secretKeyRef" in e["valueFrom"]


def _literal_secrets(node, path=""):
    """(path, key) of every string value stored under a secret-looking key or env name."""
    if isinstance(node, dict):
        name, value = node.get("name"), node.get("value")
        if isinstance(name, str) and isinstance(value, str) and SECRETISH.search(name) and value:
            yield path, name
        for key, value in node.items():
            if isinstance(value, str) and SECRETISH.search(key) and value:
                yield path, key
            yield from _literal_secrets(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _literal_secrets(item, f"{path}[{i}]")


def test_no_secret_values_in_the_work_pool_template_and_deployments():
    import yaml

    template = json.loads((REPO / "k8s" / "prefect" / "base-job-template.json").read_text())
    assert list(_literal_secrets(template["job_configuration"])) == []
    assert list(_literal_secrets(yaml.safe_load((REPO / "prefect.yaml").read_text()))) == []
    # and the walker itself finds one
    assert list(_literal_secrets({"env": [{"name": "PREFECT_API_KEY", "value": "pnu_x"}]}))


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_run_restricted(kustomization, rendered):
    """Non-root, seccomp RuntimeDefault, no privilege escalation, every capability
    dropped, read-only root, requests and limits: what the namespace's restricted Pod
    Security Standard and docs/kubernetes.md promise, for every container."""
    for obj in rendered[kustomization]:
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for v in spec.get("volumes", []):
            assert "hostPath" not in v, where
        for c in containers(spec):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert csc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert csc["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (where, c["name"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_api_tokens_only_where_the_api_is_used(kustomization, rendered):
    objects = rendered[kustomization]
    for sa in (o for o in objects if o["kind"] == "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        mounts = spec.get("automountServiceAccountToken")
        if obj["metadata"]["name"] == "visionline-prefect-worker":
            assert mounts is True
        else:
            assert mounts is False, obj["metadata"]["name"]


def test_rbac_is_namespaced_and_least_privilege(rendered):
    objects = rendered["k8s/overlays/local"]
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Role"}
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    for rb in (o for o in objects if o["kind"] == "RoleBinding"):
        assert rb["roleRef"]["kind"] == "Role" and rb["roleRef"]["name"] in roles
        for s in rb["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["name"] in accounts
            assert s["namespace"] == "visionline"
    for name, role in roles.items():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], name
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), name
            assert "pods/exec" not in rule["resources"], name
            if "secrets" in rule["resources"]:
                # One named Secret, read-only: the inference credential the deploy checks use.
                assert rule["resourceNames"] == ["visionline-inference-credentials"], name
                assert rule["verbs"] == ["get"], name
            if "deployments" in rule["resources"]:  # by name, as DEPLOYMENT_VERBS lists
                names = tuple(rule.get("resourceNames", []))
                assert set(rule["verbs"]) <= DEPLOYMENT_VERBS.get(names, {"create"}), name
            if "services" in rule["resources"]:
                # A multi-node run's Service is created; none may be rewritten.
                assert not {"patch", "update"} & set(rule["verbs"]), name

    def allowed(role: str, group: str, resource: str, verb: str) -> bool:
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
            for r in roles[role]["rules"]
        )

    # What the pipeline may do (all it does and nothing more: tests/unit/test_rbac_usage.py)
    for group, resource, verb in [
        ("batch", "jobs", "create"),
        ("batch", "jobs", "get"),
        ("batch", "jobs", "delete"),
        ("", "services", "create"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
    ]:
        assert allowed("visionline-pipeline", group, resource, verb), (resource, verb)
    # The worker starts flow runs; it does not touch serving.
    assert allowed("visionline-worker", "batch", "jobs", "create")
    assert not allowed("visionline-worker", "apps", "deployments", "patch")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_labels(kustomization, rendered):
    for obj in rendered[kustomization]:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "visionline", obj["metadata"]["name"]
        assert labels.get("app.kubernetes.io/name"), obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "visionline", obj["metadata"]["name"]
        if obj["kind"] in ("Deployment", "Job"):
            pod_labels = obj["spec"]["template"]["metadata"]["labels"]
            assert pod_labels["app.kubernetes.io/part-of"] == "visionline"
            assert pod_labels["app.kubernetes.io/component"] in (
                "training",
                "serving",
                "orchestration",
            )


def test_serving_pod(rendered):
    dep = find(rendered["k8s/overlays/gpu"], "Deployment", SERVING)
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    spec = dep["spec"]["template"]["spec"]
    fetch = spec["initContainers"][0]
    assert fetch["name"] == "fetch-model"
    assert fetch["command"][:3] == ["python", "-m", "visionline.serving.fetch"]
    opts = dict(zip(fetch["command"][3::2], fetch["command"][4::2], strict=True))
    torchserve = _container(spec, "torchserve")
    assert torchserve["args"][:2] == ["torchserve", "--foreground"]
    assert "command" not in torchserve  # the image's tini stays PID 1
    ts = dict(zip(torchserve["args"][2:][1::2], torchserve["args"][2:][2::2], strict=False))
    assert ts["--ts-config"] == opts["--ts-config"] and ts["--model-store"] == opts["--dest"]
    # The settings file the init container reads is the ConfigMap's serve.json.
    mounts = {m["mountPath"]: m["name"] for m in fetch["volumeMounts"]}
    serve_dir, _, serve_file = opts["--serve-config"].rpartition("/")
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[serve_dir])
    config = find(rendered["k8s/overlays/gpu"], "ConfigMap", volume["configMap"]["name"])
    assert {serve_file, "nginx.conf"} <= set(config["data"])
    # Readiness is the model's worker state, not an open port.
    ready = torchserve["readinessProbe"]["exec"]["command"]
    assert ready[:4] == ["python", "-m", "visionline.serving.probe", "ready"]
    assert ready[ready.index("--model") + 1] == opts["--model"].split(":")[0]
    assert torchserve["startupProbe"]["exec"]["command"] == ready
    # What TorchServe and nginx write lands on emptyDirs (read-only root).
    for c in spec["containers"] + spec["initContainers"]:
        for m in c["volumeMounts"]:
            if not m.get("readOnly"):
                assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == m["name"])


def test_gpu_overlay_schedules_serving_on_gpus(rendered):
    spec = find(rendered["k8s/overlays/gpu"], "Deployment", SERVING)["spec"]["template"]["spec"]
    torchserve = next(c for c in spec["containers"] if c["name"] == "torchserve")
    assert torchserve["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert "nodeSelector" not in spec  # the GPU limit places it (no GFD label needed)


def test_local_overlay_is_one_cpu_replica(rendered):
    objects = rendered["k8s/overlays/local"]
    hpa = find(objects, "HorizontalPodAutoscaler", SERVING)
    assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1
    spec = find(objects, "Deployment", SERVING)["spec"]["template"]["spec"]
    for c in containers(spec):
        assert not any("nvidia.com" in k for k in c["resources"]["limits"])
    assert "tolerations" not in spec


def test_hpa_pdb_target_the_serving_deployment(rendered):
    objects = rendered["k8s/overlays/gpu"]
    hpa = find(objects, "HorizontalPodAutoscaler", SERVING)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": SERVING,
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(objects, "PodDisruptionBudget", SERVING)
    labels = find(objects, "Deployment", SERVING)["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())


def test_training_jobs(rendered):
    objects = rendered["k8s/training"]
    job = find(objects, "Job", "visionline-train-digits-cnn-0123456789ab")
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    from visionline.errors import EXIT_CONFIG_ERROR

    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"]["values"] == [EXIT_CONFIG_ERROR]
    assert spec["backoffLimit"] > 0 and spec["activeDeadlineSeconds"] > 0
    trainer = spec["template"]["spec"]["containers"][0]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert trainer["args"][:3] == ["python", "-m", "visionline.training"]


def test_multinode_job_finds_rank_zero_through_its_headless_service(rendered):
    objects = rendered["k8s/training"]
    job = find(objects, "Job", "visionline-train-multi")
    svc = find(objects, "Service", "visionline-train-multi")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    args = pod["containers"][0]["args"]
    opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert args[0] == "torchrun"
    assert opts["--rdzv-backend"] == "c10d"
    host, port = opts["--rdzv-endpoint"].rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert int(port) == svc["spec"]["ports"][0]["port"]
    assert int(opts["--nnodes"]) == spec["completions"]
    assert "--node-rank" not in opts and int(opts["--max-restarts"]) > 0
    assert opts["--local-addr"] == "$(POD_IP)"
    assert spec["backoffLimitPerIndex"] >= 0 and "backoffLimit" not in spec
    ip = next(e for e in pod["containers"][0]["env"] if e["name"] == "POD_IP")
    assert ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_work_pool_template_puts_job_fields_in_the_job_spec():
    template = json.loads((REPO / "k8s" / "prefect" / "base-job-template.json").read_text())
    spec = template["job_configuration"]["job_manifest"]["spec"]
    assert spec["completions"] == 1 and spec["parallelism"] == 1
    pod = spec["template"]["spec"]
    assert not {"completions", "parallelism", "backoffLimit"} & set(pod)
    assert pod["automountServiceAccountToken"] is True
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/home/visionline", "/tmp", "/app/.visionline"} <= mounted
    defaults = template["variables"]["properties"]
    assert defaults["service_account_name"]["default"] == "visionline-pipeline"
