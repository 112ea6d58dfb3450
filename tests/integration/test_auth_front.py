"""The serving pod's front for real: two replicas, each a real TorchServe (token auth
off, loopback only) behind a real nginx with the config we generate, sharing one
credential mounted the way the kubelet mounts a Secret.

Checked: no or a wrong credential is refused (401 / UNAUTHENTICATED) and the right one
is answered on every replica, over REST and gRPC; the credential rotates without a
restart; nothing but inference (and metrics on their own port) is reachable through the
front; the readiness probe asks for a READY worker.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests

from tests.support.front import NginxFront, nginx_binary, write_secret_volume
from tests.support.s3 import free_port
from visionline.registry import Registry
from visionline.serving.client import GrpcClient, PredictionError, RestClient
from visionline.serving.fetch import fetch_mar
from visionline.serving.nginx import Backend, new_token
from visionline.serving.torchserve import ServedModel, TorchServe, parse_config

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]
if nginx_binary() is None:
    pytest.fail("nginx is not installed: apt-get install -y nginx-light (.ci/run does)")


@pytest.fixture(scope="module")
def replicas(packaged_digits, tmp_path_factory):
    store, ref, cfg = packaged_digits
    root = tmp_path_factory.mktemp("front")
    creds = root / "credentials"
    token = new_token()
    write_secret_volume(creds, {token: "test-client"})
    mar = fetch_mar(store, ref, root)

    def replica(i):
        ports = {
            k: free_port()
            for k in (
                "inference_port",
                "management_port",
                "metrics_port",
                "grpc_inference_port",
                "grpc_management_port",
            )
        }
        serve = cfg.serve.model_copy(update={**ports, "workers": 1})
        ts = TorchServe(root / f"ts-{i}", serve, token_auth=False)
        ts.start(
            [ServedModel(ref.name, f"{ref.name}.mar", serve.batch_size, 20, 1)], {ref.name: mar}
        )
        front = NginxFront(
            root / f"nginx-{i}",
            creds,
            Backend(
                "127.0.0.1",
                ports["inference_port"],
                ports["grpc_inference_port"],
                ports["metrics_port"],
            ),
            free_port(),
            free_port(),
            free_port(),
        )
        front.start()
        return ts, front

    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(replica, range(2)))
    info = Registry(store, ref.name).info(ref.version)
    try:
        yield {
            "replicas": started,
            "creds": creds,
            "token": token,
            "name": ref.name,
            "image": store.get_bytes(info["parity_keys"][0]),
        }
    finally:
        for ts, front in started:
            front.stop()
            ts.stop(quiet=True)


def _rest(front, name, token):
    return RestClient(front.rest, name, token)


def _refused_rest(front, name, token):
    with pytest.raises(PredictionError) as e:
        _rest(front, name, token).predict(b"not read")
    return e.value.status


def _grpc_code(front, name, token, image):
    client = GrpcClient(front.grpc, name, token)
    try:
        client.predict(image)
        return grpc.StatusCode.OK
    except PredictionError as e:
        return e.__cause__.code()
    finally:
        client.close()


def test_torchserve_listens_on_loopback_without_its_own_auth(replicas):
    for ts, _ in replicas["replicas"]:
        props = parse_config(ts.config_path.read_text())
        assert props["disable_token_authorization"] == "true"
        assert props["inference_address"].startswith("http://127.0.0.1:")
        assert props["grpc_inference_address"] == "127.0.0.1"
        assert not ts.key_file.exists()  # no per-replica tokens to distribute


def test_one_credential_answers_on_every_replica_over_rest_and_grpc(replicas):
    name, token, image = replicas["name"], replicas["token"], replicas["image"]
    answers = []
    for _, front in replicas["replicas"]:
        rest = _rest(front, name, token).predict(image)
        assert len(rest) == 3 and max(rest.values()) > 0.5
        client = GrpcClient(front.grpc, name, token)
        try:
            assert client.predict(image) == rest
        finally:
            client.close()
        answers.append(rest)
    # each replica picks its CPU forward plan at load (cpu_inference: auto), and plans
    # differ in rounding: the same answer, not the same bits
    assert answers[0].keys() == answers[1].keys()
    assert answers[0] == pytest.approx(answers[1], abs=1e-6)


def test_a_body_sent_without_a_content_type_is_answered_through_the_front(replicas):
    """curl --data-binary and urllib send application/x-www-form-urlencoded, which
    TorchServe's frontend would take apart; the front forwards the image as sent."""
    name, token, image = replicas["name"], replicas["token"], replicas["image"]
    _, front = replicas["replicas"][0]
    url = f"{front.rest}/predictions/{name}"
    expected = _rest(front, name, token).predict(image)
    auth = {"Authorization": f"Bearer {token}"}
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    r = requests.post(url, data=image, headers=form, timeout=30)
    assert r.status_code == 200 and r.json() == expected, r.text
    r = requests.post(url, data=b"hello=world", headers=form, timeout=30)
    assert r.status_code == 400 and "neither an image nor a form" in r.json()["error"]
    # the credential is checked first, whatever the body
    assert (
        requests.post(url, data=image, headers=form | {"Authorization": ""}, timeout=30).status_code
        == 401
    )
    # explanations pass the same front
    r = requests.post(f"{front.rest}/explanations/{name}", data=image, headers=auth, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "token", [None, "wrong-but-well-formed-token-0123456789", "..data", "../../etc/passwd"]
)
def test_missing_or_wrong_credential_is_refused(replicas, token):
    name, image = replicas["name"], replicas["image"]
    for _, front in replicas["replicas"]:
        assert _refused_rest(front, name, token) == 401
        assert _grpc_code(front, name, token, image) == grpc.StatusCode.UNAUTHENTICATED
        r = requests.get(
            f"{front.rest}/ping", headers={"Authorization": f"Bearer {token}"} if token else {}
        )
        assert r.status_code == 401 and "Bearer" in r.headers["WWW-Authenticate"]


def test_only_inference_is_reachable_through_the_front(replicas):
    token = replicas["token"]
    auth = {"Authorization": f"Bearer {token}"}
    for _, front in replicas["replicas"]:
        assert requests.get(f"{front.rest}/ping", headers=auth).json()["status"] == "Healthy"
        for path in ("/models", "/models/digits", "/api-description", "/metrics"):
            assert requests.get(f"{front.rest}{path}", headers=auth).status_code == 404
        assert requests.get(f"{front.rest}/healthz").status_code == 200  # nginx itself
        # metrics: TorchServe's own endpoint, without a credential, and nothing else there
        assert requests.get(f"{front.metrics}/metrics").status_code == 200
        assert requests.get(f"{front.metrics}/ping").status_code == 404


def test_rotation_without_restart(replicas):
    name, image, creds = replicas["name"], replicas["image"], replicas["creds"]
    old, new = replicas["token"], new_token()
    before = [front.pids() for _, front in replicas["replicas"]]
    try:
        write_secret_volume(creds, {old: "test-client", new: "test-client-next"})
        for _, front in replicas["replicas"]:  # both accepted while clients move over
            assert _rest(front, name, old).predict(image)
            assert _rest(front, name, new).predict(image)
        write_secret_volume(creds, {new: "test-client-next"})
        for _, front in replicas["replicas"]:
            assert _refused_rest(front, name, old) == 401
            assert _grpc_code(front, name, old, image) == grpc.StatusCode.UNAUTHENTICATED
            assert _rest(front, name, new).predict(image)
            assert _grpc_code(front, name, new, image) == grpc.StatusCode.OK
        assert [front.pids() for _, front in replicas["replicas"]] == before  # no restart
    finally:
        write_secret_volume(creds, {old: "test-client"})


def test_readiness_probe_asks_for_a_ready_worker(replicas):
    ts, _ = replicas["replicas"][0]
    probe = [sys.executable, "-m", "visionline.serving.probe"]
    ready = subprocess.run(
        [*probe, "ready", "--model", replicas["name"], "--management", ts.endpoints.management],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ready.returncode == 0 and "READY" in ready.stdout
    missing = subprocess.run(
        [*probe, "ready", "--model", "nosuchmodel", "--management", ts.endpoints.management],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "404" in missing.stderr
    live = subprocess.run(
        [*probe, "live", "--inference", ts.endpoints.inference],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert live.returncode == 0 and "Healthy" in live.stdout
