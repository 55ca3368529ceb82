"""Remote mode in an environment that has only the torch-free client and slicer-core (no torch, monai, fastapi),
against a real ``organdetr serve`` started from this environment. The client environment is made by
prepare_client_venv.sh (~70 s; $ORGANDETR_CLIENT_VENV or .venv-client); without it the test is skipped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_embedded_backend import backend, tiny_checkpoint  # noqa: F401  (fixtures: a real organdetr serve)

REPOSITORY = Path(__file__).resolve().parents[2]
CLIENT_PYTHON = Path(os.environ.get("ORGANDETR_CLIENT_VENV", REPOSITORY / ".venv-client")) / "bin" / "python"


@pytest.mark.skipif(not CLIENT_PYTHON.exists(), reason="run Testing/slicer_module/prepare_client_venv.sh first")
def test_remote_mode_without_torch(backend, small_abdomen_ct):  # noqa: F811
    has_torch = subprocess.run([str(CLIENT_PYTHON), "-c", "import torch"], capture_output=True, check=False)
    assert has_torch.returncode != 0, "the client environment must not have torch"
    run = subprocess.run(
        [
            str(CLIENT_PYTHON),
            str(Path(__file__).with_name("remote_mode_check.py")),
            backend.url,
            backend.token,
            str(small_abdomen_ct),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["state"] == "done", report["words"]
    assert {"uploading", "running"} <= set(report["states"]) or "fetching" in report["states"]
    assert report["cancelled"] == "cancelled" and not report["torch_loaded"]
