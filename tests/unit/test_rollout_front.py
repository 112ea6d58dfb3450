"""The front's rollout configuration: nginx accepts it in both modes, the request id
reaches TorchServe and the client, and without a rollout nothing changes."""

from __future__ import annotations

import subprocess

import pytest

from visionline.errors import ServingError
from visionline.serving.nginx import Backend, RolloutFront, nginx_binary, render_nginx_conf

BACKEND = Backend("127.0.0.1", 8080, 7070, 8082)


def _render(tmp_path, rollout=None, credentials=None, **kw):
    return render_nginx_conf(
        credentials_dir=credentials,
        backend=BACKEND,
        rest_port=8085,
        grpc_port=None,
        metrics_port=None,
        tmp_dir=tmp_path / "tmp",
        rollout=rollout,
        run_as="root",
        **kw,
    )


def _front(mode: str, percent: float = 25) -> RolloutFront:
    return RolloutFront(mode, percent, "127.0.0.1", 9090, 9091, "/tmp/r.jsonl", 5)


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
@pytest.mark.parametrize("mode", ["shadow", "canary"])
@pytest.mark.parametrize("credentials", [None, "/etc/creds"])
def test_nginx_accepts_the_rollout_front(tmp_path, mode, credentials):
    text = _render(tmp_path, _front(mode), credentials)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    (tmp_path / "tmp").mkdir()
    checked = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert "25% challenger;" in text and "X-Request-Id $visionline_request_id" in text
    if mode == "shadow":
        assert "mirror /_visionline_mirror;" in text and "listen 127.0.0.1:9091;" in text
        assert "rewrite ^(.*)$ /_visionline_canary" not in text
    else:
        assert "mirror /_visionline_" not in text and "/_visionline_canary$1 last" in text


def test_without_a_rollout_the_front_is_unchanged(tmp_path):
    plain = _render(tmp_path)
    assert "visionline_request_id" not in plain and "mirror" not in plain
    with_id = _render(tmp_path, request_id=True)
    assert "proxy_set_header X-Request-Id $visionline_request_id;" in with_id
    assert "split_clients" not in with_id


@pytest.mark.parametrize("bad", [RolloutFront("blue", 10, "h", 1, 2, "l"), _front("canary", 0)])
def test_a_bad_rollout_is_refused_with_its_values(tmp_path, bad):
    with pytest.raises(ServingError, match="rollout: mode"):
        _render(tmp_path, bad)
