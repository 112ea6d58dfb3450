"""A real TorchServe (Java 17) serving the .mar we built, over REST and gRPC, on loopback.

The server is started and stopped with the `visionline serve` CLI, as a user would.
"""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.faults import bomb_png
from tests.support.serving import served_digits, visionline_cli
from visionline.serving import autoscaling
from visionline.serving.client import GrpcClient, PredictionError, RestClient
from visionline.serving.parity import parity_check
from visionline.serving.torchserve import management_is_loopback_only, parse_config

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(packaged_digits, tmp_path_factory):
    with served_digits(packaged_digits, tmp_path_factory.mktemp("serve")) as s:
        yield {
            "cfg_path": s["cfg_path"],
            "work": s["tsdir"],
            "stdout": s["stdout"],
            "token": s["keys"]["inference"]["key"],
            "rest": s["root"],
            "grpc": f"127.0.0.1:{s['ports']['grpc_inference_port']}",
            "mgmt_port": s["ports"]["management_port"],
            "metrics_port": s["ports"]["metrics_port"],
            "name": s["name"],
            "store": s["store"],
            "info": s["info"],
            "good": s["good"],
        }


def test_cli_prints_endpoints_and_token_location(server):
    out = server["stdout"]
    assert f"{server['rest']}/predictions/{server['name']}" in out
    assert "key_file.json" in out and "loopback only" in out


def test_rest_and_grpc_agree(server):
    rest = RestClient(server["rest"], server["name"], server["token"]).predict(server["good"])
    grpc = GrpcClient(server["grpc"], server["name"], server["token"])
    assert grpc.ping()
    assert grpc.predict(server["good"]) == rest
    assert len(rest) == 3 and max(rest.values()) > 0.5


def test_request_without_token_is_refused(server):
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        r = requests.post(
            f"{server['rest']}/predictions/{server['name']}", data=server["good"], headers=headers
        )
        assert r.status_code in (400, 401, 403) and "Token Authorization failed" in r.text
    with pytest.raises(PredictionError):
        GrpcClient(server["grpc"], server["name"], None).predict(server["good"])


def test_generated_config_is_locked_down(server):
    text = (server["work"] / "config.properties").read_text()
    props = parse_config(text)
    assert management_is_loopback_only(text)
    assert props["enable_model_api"] == "false" and props["disable_token_authorization"] == "false"
    assert props["allowed_urls"].startswith("file://") and "model-store" in props["allowed_urls"]
    # and, for real: the management port answers on loopback only
    assert requests.get(f"http://127.0.0.1:{server['mgmt_port']}/models").status_code in (400, 401)
    addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for addr in addrs - {"127.0.0.1"}:
        if addr.startswith("127."):
            continue
        with (
            pytest.raises(OSError),
            socket.create_connection((addr, server["mgmt_port"]), timeout=2),
        ):
            pass


@pytest.mark.parametrize(
    "body,ctype,message",
    [
        (b"definitely not an image", None, "not a recognised image format"),
        (b"", None, "empty"),
        (bomb_png(30000, 30000), None, "decompression-bomb guard"),
        (b'{"data": "', "application/json", "malformed JSON"),
    ],
    ids=["not-image", "zero-bytes", "over-limit", "malformed-json"],
)
def test_bad_input_then_good_input(server, body, ctype, message):
    headers = {"Authorization": f"Bearer {server['token']}"}
    if ctype:
        headers["Content-Type"] = ctype
    r = requests.post(f"{server['rest']}/predictions/{server['name']}", data=body, headers=headers)
    assert r.status_code == 400 and message in r.text
    good = RestClient(server["rest"], server["name"], server["token"]).predict(server["good"])
    assert len(good) == 3


def test_truncated_and_base64_over_grpc(server):
    grpc = GrpcClient(server["grpc"], server["name"], server["token"])
    with pytest.raises(PredictionError, match=r"truncated|not a recognised"):
        grpc.predict(server["good"][: len(server["good"]) // 2])
    assert len(grpc.predict(server["good"])) == 3
    js = RestClient(server["rest"], server["name"], server["token"]).predict_json(server["good"])
    assert js == RestClient(server["rest"], server["name"], server["token"]).predict(server["good"])
    bad = requests.post(
        f"{server['rest']}/predictions/{server['name']}",
        json={"data": "not base64 at all!"},
        headers={"Authorization": f"Bearer {server['token']}"},
        timeout=60,
    )
    assert bad.status_code == 400 and "not valid base64" in bad.text


def test_the_configured_batching_is_applied(server):
    """TorchServe applies per-model settings only under the archive's own version: the
    worker must really be batching 4 requests with a 50 ms delay, as configured."""
    keys = json.loads((server["work"] / "key_file.json").read_text())
    r = requests.get(
        f"http://127.0.0.1:{server['mgmt_port']}/models/{server['name']}",
        headers={"Authorization": f"Bearer {keys['management']['key']}"},
    )
    assert r.status_code == 200, r.text
    (described,) = r.json()
    assert (described["batchSize"], described["maxBatchDelay"]) == (4, 50)
    assert described["modelVersion"] == server["info"]["version"]
    log = (server["work"] / "logs" / "model_log.log").read_text()
    assert f"model_name: {server['name']}, batchSize: 4" in log
    assert "cpu inference:" in log  # the worker planned its forward pass (mode auto)


def test_concurrent_batches_with_bad_requests_mixed_in(server):
    """batch_size=4: bad and good requests land in the same batches; only bad ones fail."""
    url = f"{server['rest']}/predictions/{server['name']}"
    headers = {"Authorization": f"Bearer {server['token']}"}
    bodies = [server["good"] if i % 3 else b"junk" for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda b: requests.post(url, data=b, headers=headers).status_code, bodies)
        )
    assert codes == [200 if i % 3 else 400 for i in range(24)]


def test_parity_with_the_in_process_model(server):
    client = RestClient(server["rest"], server["name"], server["token"])
    report = parity_check(client, server["store"], server["info"])
    assert report.ok, report.summary()
    assert report.checked == len(server["info"]["parity_keys"]) and report.max_abs_diff <= 1e-4


def test_cli_predict_over_rest_and_grpc(server, tmp_path):
    img = tmp_path / "digit.png"
    img.write_bytes(server["good"])
    for extra in ([f"--endpoint={server['rest']}"], ["--grpc", f"--endpoint={server['grpc']}"]):
        out = visionline_cli(
            server["cfg_path"], "predict", str(img), "--workdir", str(server["work"]), *extra
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{img}: ")


def _load(server, clients: int, seconds: float) -> int:
    """``clients`` closed-loop clients for ``seconds``; the requests answered."""
    stop = time.monotonic() + seconds
    done = []

    def client():
        c = RestClient(server["rest"], server["name"], server["token"])
        n = 0
        while time.monotonic() < stop:
            c.predict(server["good"])
            n += 1
        done.append(n)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def test_queue_wait_tracks_the_load_and_says_what_an_hpa_would_do(server):
    """#20 item 4, locally: the load rises in steps; at each the pod's queue-wait metric
    (from TorchServe's two counters, as the adapter rule computes it) and the replica count
    an HPA would set from it. The metric must follow the queue: more clients waiting, longer
    waits, more replicas wanted."""
    url = f"http://127.0.0.1:{server['metrics_port']}/metrics"
    steps = []
    for clients in (1, 8, 64):
        before = requests.get(url, timeout=10).text
        answered = _load(server, clients, seconds=4.0)
        after = requests.get(url, timeout=10).text
        wait = autoscaling.queue_wait_seconds(before, after)
        # Little's law: requests waiting in the queue on average = arrival rate x wait
        steps.append((clients, answered / 4.0, wait, answered / 4.0 * wait))
    print("\nclients  req/s  queue wait (s)  waiting (Little)  replicas an HPA sets")
    for clients, rate, wait, waiting in steps:
        replicas = autoscaling.desired_replicas(1, wait)
        print(f"{clients:7d}  {rate:5.1f}  {wait:14.3f}  {waiting:16.2f}  {replicas:19d}")
    waits = [w for _, _, w, _ in steps]
    waiting = [q for _, _, _, q in steps]
    # Below a full batch a request's wait is mostly the batch delay (50 ms here), whatever
    # the load: the metric has that floor (1 client), which the target (0.1 s) sits above.
    # Past a full batch the wait follows the queue: 64 clients against batches of 4 wait
    # many batches deep, 8 clients about one, on a fast machine or a slow one.
    assert waits[2] > 2 * waits[1], steps
    assert waiting[2] > waiting[1], steps
    replicas = [autoscaling.desired_replicas(1, w) for w in waits]
    assert replicas[2] >= replicas[1], steps
