"""The ``visionline`` command's own machinery: which command argv chooses, that only its
module is loaded, and the local server's token read where TorchServe's layout is known."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO
from visionline.cli import COMMANDS, chosen_command, load_command, main
from visionline.serving.torchserve import key_file_path, read_tokens


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["train", "--epochs", "2"], "train"),
        (["--config", "train", "models", "list"], "models"),  # a config file named train
        (["-c", "x.yaml", "-v", "label-queue", "digits"], "label-queue"),
        (["--store=/tmp/s", "doctor"], "doctor"),
        (["--help"], None),
        (["trian"], None),
        ([], None),
    ],
)
def test_the_chosen_command(argv, command):
    assert chosen_command(argv) == command


def test_every_command_is_defined_where_the_table_says():
    for name in COMMANDS:
        command = load_command(name)
        assert callable(command.arguments) and callable(command.run), name


def test_only_the_chosen_commands_module_is_loaded():
    code = (
        "import sys\n"
        "from visionline.cli import main\n"
        "try:\n"
        "    main(['evaluate', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('visionline.cli.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.split("\n")[-2] == "['visionline.cli.common', 'visionline.cli.evaluate']"


def test_a_mistyped_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["trian"])
    assert e.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def test_tokens_are_read_from_torchserves_key_file(tmp_path):
    key_file_path(tmp_path).write_text(
        json.dumps({"inference": {"key": "inf-1"}, "management": {"key": "man-1"}, "x": 1})
    )
    assert read_tokens(key_file_path(tmp_path)) == {"inference": "inf-1", "management": "man-1"}


def test_predict_sends_the_local_servers_inference_token(tmp_path, capsys):
    key_file_path(tmp_path).write_text(
        json.dumps({"inference": {"key": "inf-1"}, "management": {"key": "man-1"}})
    )
    seen: list[tuple[str, str | None]] = []

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"3": 0.75, "8": 0.25}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    image = tmp_path / "three.png"
    image.write_bytes(b"not looked at by this server")
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        argv = ["predict", str(image), "--endpoint", endpoint, "--workdir", str(tmp_path)]
        assert main([*argv, "--model", "digits"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/predictions/digits", "Bearer inf-1")]
    assert capsys.readouterr().out == f"{image}: 3=0.7500, 8=0.2500\n"
