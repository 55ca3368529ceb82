"""The torch-free client and the Slicer module run in Slicer 5.8's Python 3.9 (remote mode needs nothing else).

Static, always: no syntax, union type, annotation evaluation or library feature of Python 3.10+ in
OrganDETRSlicer/organdetr_client, OrganDETRSlicer/OrganDETRSlicerLib and OrganDETRSlicer.py (vermin for the library,
python39_features.py for what vermin cannot tell).

With a real Python 3.9 (``$ORGANDETR_PYTHON39``, pyenv's 3.9, or python3.9 on PATH): its own parser compiles every
module file; with the Python 3.9 environment of prepare_py39_venv.sh (``$ORGANDETR_PY39_VENV`` or .venv-py39):
py39_check.py imports the client and every module file there and runs a client round trip.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODULE_DIR
from python39_features import features_after_39

REPOSITORY = MODULE_DIR.parent
SCOPE = [
    *sorted((MODULE_DIR / "organdetr_client").glob("*.py")),
    *sorted((MODULE_DIR / "OrganDETRSlicerLib").glob("*.py")),
    MODULE_DIR / "OrganDETRSlicer.py",
]
PY39_CHECK = Path(__file__).with_name("py39_check.py")
PY39_VENV = Path(os.environ.get("ORGANDETR_PY39_VENV", REPOSITORY / ".venv-py39"))


def test_module_files_use_nothing_beyond_python_39():
    assert len(SCOPE) > 20
    found = [
        problem for path in [*SCOPE, PY39_CHECK] for problem in features_after_39(path.read_text("utf-8"), path.name)
    ]
    assert found == []


VERMIN = "import sys, vermin; sys.exit(vermin.main())"  # vermin has no __main__; this is its console script


def _vermin(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", VERMIN, "--target=3.9-", "--violations", "--no-tips", "-vv", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_vermin_finds_nothing_beyond_python_39():
    run = _vermin(*SCOPE, PY39_CHECK)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Minimum required versions: 3." in run.stdout


def test_vermin_is_set_to_fail_on_python_310_library_features(tmp_path):
    source = tmp_path / "later.py"
    source.write_text("import dataclasses\n\n\n@dataclasses.dataclass(slots=True)\nclass A:\n    x: int = 0\n")
    run = _vermin(source)
    assert run.returncode != 0 and "dataclass(slots)" in run.stdout


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("match command:\n    case 'go':\n        pass\n", "syntax of a later Python"),
        ("def f(path: str | None) -> None:\n    pass\n", "annotation evaluated at definition time"),
        ("class P:\n    url: str | None = None\n", "annotation evaluated at definition time"),
        (
            "from __future__ import annotations\nfrom pydantic import BaseModel\n\n\nclass M(BaseModel):\n"
            "    name: str | None = None\n",
            "pydantic / parameterNodeWrapper evaluates",
        ),
        (
            "from __future__ import annotations\n\n\n@parameterNodeWrapper\nclass P:\n    node: 'Node | None'\n",
            "pydantic / parameterNodeWrapper evaluates",
        ),
        ("Maybe = int | None\n", "X | Y type built at run time"),
        ("ok = isinstance(value, int | str)\n", "X | Y type built at run time"),
        ("pairs = list(zip(a, b, strict=True))\n", "zip(strict=)"),
        ("from dataclasses import dataclass\n\n\n@dataclass(kw_only=True)\nclass A:\n    x: int = 0\n", "kw_only"),
        ("ones = (255).bit_count()\n", "bit_count"),
        ("from typing import TypeAlias\n", "typing.TypeAlias"),
    ],
)
def test_python39_check_finds_later_features(source, what):
    found = features_after_39(source, "later.py")
    assert any(what in problem for problem in found), found


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations\n\n\ndef f(path: str | None) -> int | None:\n    local: int | None = 1\n",
        "def f():\n    local: int | None = None\n",  # local variable annotations are never evaluated
        "flags = a | b\nnames = {1} | {2}\n",
        "text = 'prefix-name'.removeprefix('prefix-')\n",  # 3.9
        "from typing import Annotated, Optional\n\nx: Optional[int] = None\n",
    ],
)
def test_python39_check_accepts_python_39_code(source):
    assert features_after_39(source, "fine.py") == []


@functools.cache
def _python39() -> str | None:
    """A Python 3.9 interpreter: $ORGANDETR_PYTHON39, the newest pyenv 3.9, or python3.9 on PATH (one that runs)."""
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.9.*/bin/python3.9"), key=lambda p: p.parts[-3], reverse=True)
    for candidate in [os.environ.get("ORGANDETR_PYTHON39"), *map(str, pyenv), shutil.which("python3.9")]:
        if candidate and Path(candidate).exists():
            probe = subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 9)"],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if probe.returncode == 0:
                return candidate
    return None


def test_python39_compiles_every_module_file():
    python = _python39()
    if python is None:
        pytest.skip("no Python 3.9 interpreter (set ORGANDETR_PYTHON39)")
    files = [*SCOPE, PY39_CHECK]
    run = subprocess.run(
        [
            python,
            "-c",
            "import sys\nfor path in sys.argv[1:]:\n    compile(open(path, encoding='utf-8').read(), path, 'exec')",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(
    not (PY39_VENV / "bin" / "python").exists(), reason="run Testing/slicer_module/prepare_py39_venv.sh first"
)
def test_client_and_module_files_load_in_python39():
    python = PY39_VENV / "bin" / "python"
    run = subprocess.run(
        [str(python), str(PY39_CHECK), str(MODULE_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["python"].startswith("3.9.")
    assert report["client_modules"] == sorted(path.stem for path in SCOPE if path.parent.name == "organdetr_client")
    assert report["library_modules"] == sorted(path.stem for path in SCOPE if path.parent.name == "OrganDETRSlicerLib")
    assert len(report["client_round_trip"]) == 5
    assert "scoreThreshold" in report["parameters"] and "OrganDETRSlicerWidget" in report["module_classes"]
