"""notebooks/quickstart.ipynb, executed top to bottom in a real Jupyter kernel (nbclient),
so it never rots: ingest, search, trials table, confusion matrix, serve, stop."""

from __future__ import annotations

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.support.ports import serve_ports
from visionline.config import ServeConfig
from visionline.serving.local import LocalDeployer
from visionline.storage import LocalStore

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
KERNEL = "visionline-quickstart-test"


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernel running this interpreter (the repo's .venv in CI, the shared venv here)
    with this checkout's sources first on the path, whatever kernels the machine has."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    path = [str(REPO / "src"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "visionline (tests)",
                "language": "python",
                "env": {"PYTHONPATH": os.pathsep.join(path)},
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # no IPython profile or history from the home directory of whoever runs the tests
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return KERNEL


def _inject(nb, **params) -> None:
    """Papermill's convention: a cell after the one tagged `parameters` overrides it."""
    at = next(
        i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    )
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected"]}))


def test_quickstart_notebook_executes(kernel, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    ports = serve_ports()
    work = tmp_path / "quickstart"
    _inject(
        nb,
        WORKDIR=str(work),
        TRIALS=3,
        EPOCHS=3,
        PER_CLASS=20,
        OVERRIDES={
            **ports,
            "tune.parallel": 2,
            # 20 images per class: a few test images per class, so looser thresholds
            "gate.min_accuracy": 0.5,
            "gate.min_macro_f1": 0.5,
            "gate.min_class_recall": 0.0,
            "validation.min_per_class": 1,
        },
    )
    client = NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=900,
        # where Jupyter starts it: the notebook's folder (everything it writes goes to WORKDIR)
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    try:
        client.execute()
    finally:
        # the notebook's last cell stops the server; a failed cell must not leave it up,
        # nor the nginx front the local deployment starts beside it
        serve = ServeConfig(**{k.split(".", 1)[1]: v for k, v in ports.items()})
        deployment = LocalDeployer(LocalStore(work / "store"), serve, work / "serve")
        deployment.front.stop()
        deployment.server.stop(quiet=True)

    outputs = {
        i: "".join(o.get("text", "") for o in c.get("outputs", []))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "validation of digits:" in text and "PASSED" in text
    assert "trials (" in text and "best: trial" in text  # the search's summary
    assert "gate for" in text and "PASS" in text
    assert "packaged digits:1" in text
    assert "TorchServe stopped" in text
    # the trials table, the plots and the confusion matrix were displayed
    rich = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    html = [o["data"]["text/html"] for o in rich if "text/html" in o.get("data", {})]
    assert any("val_accuracy" in h and "state" in h for h in html)
    assert sum("image/png" in o.get("data", {}) for o in rich) >= 3
    assert any("predicted" in h and "probability" in h for h in html)
