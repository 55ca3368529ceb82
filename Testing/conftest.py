"""Shared test fixtures: paths of the project's own small real CT data (no dependency on ../shared).

Tests run with the same fast-on-a-shared-machine thread defaults as the ``organdetr`` commands (passive OpenMP
waiting, set before any test module imports torch, and one thread per free core); subprocesses inherit the policy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from organdetr_backend.threads import configure_threads, use_passive_waiting

use_passive_waiting()
configure_threads(None)

DATA_DIR = Path(__file__).resolve().parent / "Data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def small_abdomen_ct() -> Path:
    """TotalSegmentator abdomen CT, 122x101x30 voxels, 3 mm, RAS."""
    return DATA_DIR / "ts_example_ct_sm_3mm" / "ct.nii.gz"


@pytest.fixture(scope="session")
def head_neck_case() -> tuple[Path, Path]:
    """OpenKBP validation patient pt_201 (CT, organ-at-risk label map), orientation PLI."""
    case = DATA_DIR / "openkbp_pt_201"
    return case / "ct.nii.gz", case / "oar_label.nii.gz"
