"""X-ray fixtures: the bundled OpenKBP CT pt_201, read once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from xray_case import HeadNeckCase, load_head_neck_case


@pytest.fixture(scope="session")
def pt_201(head_neck_case: tuple[Path, Path]) -> HeadNeckCase:
    return load_head_neck_case(*head_neck_case)
