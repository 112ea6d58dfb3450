"""The CLI as a new user types it, stage by stage, on a fresh store; then the Prefect
pipeline reaches the run the CLI trained and reuses it instead of training again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from visionline.model.runs import RunPaths
from visionline.storage import LocalStore

pytestmark = pytest.mark.slow
VISIONLINE = [sys.executable, "-m", "visionline.cli"]


def run(
    *args: str, cwd: Path, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """`samples`, `ingest`, `validate`, `train` with a copy of
    configs/digits.yaml whose store is an empty folder (fewer epochs, to stay quick)."""
    work = tmp_path_factory.mktemp("cli")
    spec = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    spec["store"] = str(work / "store")
    spec["data"]["cache_dir"] = str(work / "cache")
    spec["train"]["epochs"] = 4
    spec["gate"].update(min_accuracy=0.8, min_macro_f1=0.8, min_class_recall=0.5)
    copy = work / "digits.yaml"
    copy.write_text(yaml.safe_dump(spec))
    out = {"work": work, "config": copy, "store": LocalStore(work / "store")}
    out["samples"] = run(*VISIONLINE, "samples", "digits", "d", cwd=work)
    out["ingest"] = run(
        *VISIONLINE, "--config", str(copy), "ingest", "d", "--dataset", "digits", cwd=work
    )
    out["validate"] = run(*VISIONLINE, "--config", str(copy), "validate", "digits", cwd=work)
    out["train"] = run(*VISIONLINE, "--config", str(copy), "train", cwd=work)
    return out


def test_samples_ingest_and_train_succeed(lifecycle):
    for step in ("samples", "ingest", "validate", "train"):
        p = lifecycle[step]
        assert p.returncode == 0, f"{step}: {p.stdout}\n{p.stderr}"
        assert "error" not in p.stderr.lower(), f"{step}: {p.stderr}"
    assert "wrote 1797 digits images" in lifecycle["samples"].stdout
    assert "ingested digits:" in lifecycle["ingest"].stdout
    assert "PASSED" in lifecycle["validate"].stdout
    line = lifecycle["train"].stdout
    assert "trained 4 epochs" in line and "outputs: " in line


def _run_id(lifecycle) -> str:
    return lifecycle["train"].stdout.split()[1].rstrip(":")


def test_evaluate_gate_package_lineage(lifecycle):
    config, work = str(lifecycle["config"]), lifecycle["work"]
    run_id = _run_id(lifecycle)
    ev = run(*VISIONLINE, "--config", config, "evaluate", run_id, cwd=work)
    assert ev.returncode == 0 and "accuracy" in ev.stdout and "report.md" in ev.stdout, ev.stderr
    gate = run(*VISIONLINE, "--config", config, "gate", run_id, cwd=work)
    assert gate.returncode == 0 and "PASS" in gate.stdout, gate.stdout + gate.stderr
    pkg = run(*VISIONLINE, "--config", config, "package", run_id, cwd=work)
    assert pkg.returncode == 0 and "packaged run" in pkg.stdout and "digits:1" in pkg.stdout
    lin = run(*VISIONLINE, "--config", config, "lineage", "digits:1", cwd=work)
    assert lin.returncode == 0, lin.stderr
    assert run_id in lin.stdout and "validation:" in lin.stdout


def test_gate_fails_with_exit_1_on_strict_thresholds(lifecycle, tmp_path):
    spec = yaml.safe_load(lifecycle["config"].read_text())
    spec["gate"].update(min_accuracy=1.0, min_macro_f1=1.0, min_class_recall=1.0)
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(spec))
    # a new gate config is a new question, so it gets a new answer
    gate = run(*VISIONLINE, "--config", str(strict), "gate", _run_id(lifecycle), cwd=tmp_path)
    assert gate.returncode == 1 and "[FAIL] accuracy" in gate.stdout


def test_pipeline_reuses_the_run_the_cli_trained(lifecycle, tmp_path):
    """The flow plans the run exactly as the CLI did: same run id, no checkpoint rewritten."""
    store = lifecycle["store"]
    run_id = _run_id(lifecycle)
    paths = RunPaths(run_id)
    trained = (paths.checkpoints, paths.model, paths.run_info, paths.metrics, paths.config)

    def training_outputs() -> dict[str, bytes]:
        keys = store.list(paths.prefix + "/")
        return {k: store.get_bytes(k) for k in keys if k.startswith(trained)}

    before = training_outputs()
    assert any(k.startswith(paths.checkpoints) for k in before)
    flow = run(
        sys.executable,
        "-m",
        "flows.training_pipeline",
        "--config",
        str(lifecycle["config"]),
        "--no-deploy",
        cwd=REPO,
        # what `make` sets: Prefect's own home, and time for a fresh database to migrate
        env={
            **os.environ,
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        },
    )
    assert flow.returncode == 0, flow.stdout[-3000:] + flow.stderr[-3000:]
    out = json.loads(flow.stdout[flow.stdout.index("{") :])
    assert out["run_id"] == run_id and out["gate"] == "pass"
    after = training_outputs()
    changed = [k for k in before.keys() | after.keys() if after.get(k) != before.get(k)]
    assert not changed, f"the pipeline rewrote {changed}"
    info = store.get_json(paths.run_info)
    # the run records the data gate it trained behind (the CLI's `validate` above)
    assert info["validation"] and store.exists(f"{info['validation']}/result.json")


def test_every_help(tmp_path):
    top = run(*VISIONLINE, "--help", cwd=tmp_path)
    assert top.returncode == 0
    commands = top.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert {"train", "evaluate", "gate", "package", "doctor", "samples", "deploy"} <= set(commands)
    # a few at a time: each is a process that loads torch, and they share nothing
    with ThreadPoolExecutor(max_workers=3) as pool:
        helps = pool.map(lambda c: (c, run(*VISIONLINE, c, "--help", cwd=tmp_path)), commands)
        for command, h in helps:
            assert h.returncode == 0 and "usage: visionline" in h.stdout, command


def test_doctor_reports_each_check(tmp_path):
    d = run(*VISIONLINE, "--store", str(tmp_path / "s"), "doctor", cwd=tmp_path)
    for name in ("torch", "java", "store", "prefect", "kubernetes", "torchserve", "nginx"):
        assert f"] {name}:" in d.stdout, d.stdout
    assert "[ok  ] store:" in d.stdout
    assert "[ok  ] nginx:" in d.stdout  # make test installs it: REST through the local front
