"""Thread defaults: passive OpenMP waiting before torch loads, one thread per free core, ``--threads`` for every
command (train's own option included), and the user's explicit choices kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from organdetr_backend import threads
from organdetr_backend.cli import main

# Runs the CLI in a fresh interpreter and reports what OMP_WAIT_POLICY was when torch was first imported.
WATCH_TORCH_IMPORT = """
import importlib.abc, json, os, sys

policy_at_torch_import = []


class WatchTorchImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not policy_at_torch_import:
            policy_at_torch_import.append(os.environ.get("OMP_WAIT_POLICY"))
        return None


sys.meta_path.insert(0, WatchTorchImport())
from organdetr_backend.cli import main

code = main(sys.argv[1:])
import torch

print(json.dumps({"code": code, "policy": policy_at_torch_import[0], "threads": torch.get_num_threads()}))
"""


def run_cli(*args: str, **environment: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    completed = subprocess.run(
        [sys.executable, "-c", WATCH_TORCH_IMPORT, *args],
        env=env | environment,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture()
def torch_threads():
    """Restores torch's thread count after a test that runs commands in-process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cores", "busy", "expected"),
    [(2, 0.0, 2), (2, 0.3, 2), (2, 1.0, 1), (2, 1.6, 1), (2, 5.0, 1), (8, 2.6, 5), (8, 0.4, 8)],
)
def test_free_cores(cores, busy, expected) -> None:
    assert threads.free_cores(cores, busy) == expected


def test_default_follows_free_cores_unless_omp_num_threads_is_set(monkeypatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda meanwhile: (meanwhile(), 1.2)[1])
    monkeypatch.delenv(threads.NUM_THREADS_ENV, raising=False)
    assert threads.default_thread_count() == 3
    monkeypatch.setenv(threads.NUM_THREADS_ENV, "2")
    assert threads.default_thread_count() == 2
    monkeypatch.setenv(threads.NUM_THREADS_ENV, "4,2")  # a nested-parallelism list: left to OpenMP, not ours
    assert threads.default_thread_count() == 3


def test_other_programs_cores_leave_out_this_process() -> None:
    # CPUs 0, 1, 3 usable (2 is not ours to count); this process used 1.0 core of the 2.5 busy ones.
    assert threads.other_programs_cores([100.0, 50.0, 100.0, 100.0], [0, 1, 3], own_cores=1.0) == pytest.approx(1.5)
    assert threads.other_programs_cores([100.0, 0.0], [0, 1], own_cores=1.2) == 0.0  # sampling noise: never below 0
    assert threads.other_programs_cores([100.0], [0, 1], own_cores=0.0) == pytest.approx(1.0)  # CPU 1 not reported


def test_busy_cores_does_not_count_this_process_own_work() -> None:
    """Sampled while this process keeps a core busy itself (as the CLI does importing torch), no more cores count as
    other programs' than when it idles: its own core is left out. (On an idle machine, counting it would add ~1.)"""

    def spin() -> None:
        ends = time.monotonic() + 0.5
        while time.monotonic() < ends:
            pass

    idling = threads.busy_cores(lambda: time.sleep(0.5))
    spinning = threads.busy_cores(spin)
    assert spinning <= idling + 0.5, (spinning, idling)


def test_cli_makes_waiting_passive_before_torch_loads(small_abdomen_ct) -> None:
    figures = run_cli("detect", str(small_abdomen_ct), "--top-k", "0", "--threads", "1")
    assert figures == {"code": 2, "policy": "PASSIVE", "threads": 1}


def test_users_wait_policy_and_thread_count_are_kept(small_abdomen_ct) -> None:
    figures = run_cli("detect", str(small_abdomen_ct), "--top-k", "0", OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert figures == {"code": 2, "policy": "ACTIVE", "threads": 1}


@pytest.mark.parametrize("command", ["detect", "train"])
def test_every_command_gets_the_default(command, small_abdomen_ct, tmp_path, monkeypatch, torch_threads) -> None:
    """train has its own --threads; the CLI's default reaches it too (the command then fails on missing data)."""
    chosen = torch.get_num_threads() + 1
    monkeypatch.setattr(threads, "default_thread_count", lambda meanwhile: (meanwhile(), chosen)[1])
    arguments = {
        "detect": ["detect", str(small_abdomen_ct), "--top-k", "0"],
        "train": ["train", "--data", str(tmp_path / "missing.json"), "--output", str(tmp_path / "run")],
    }[command]
    assert main(arguments) == 2
    assert torch.get_num_threads() == chosen


def test_threads_option_overrides_the_default(small_abdomen_ct, torch_threads) -> None:
    wanted = torch.get_num_threads() + 1
    assert main(["detect", str(small_abdomen_ct), "--top-k", "0", "--threads", str(wanted)]) == 2
    assert torch.get_num_threads() == wanted


def test_threads_must_be_positive(tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "d.json"), "--output", str(tmp_path / "r"), "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "organdetr train: error: --threads must be at least 1"
