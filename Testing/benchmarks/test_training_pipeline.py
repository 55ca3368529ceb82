"""The training-pipeline benchmark end to end on real CT cases with the shipped model (it had broken unnoticed)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import training_pipeline
from openkbp_dataset import write_dataset_json


def test_prints_sample_and_step_figures(tmp_path, data_dir, monkeypatch, capsys) -> None:
    data = write_dataset_json(tmp_path, data_dir)
    arguments = ["--data", str(data), "--cases", "2", "--rounds", "1", "--steps", "1", "--batch-size", "1"]
    monkeypatch.setattr(sys, "argv", ["training_pipeline.py", *arguments, "--device", "cpu"])
    training_pipeline.main()
    printed = capsys.readouterr().out
    samples = re.findall(r"sample on the CPU \(one loader worker\), (.+): ([0-9.]+) s \(([0-9.]+) samples/s\)", printed)
    assert [what for what, _, _ in samples] == ["field of view, no augmentation", "default augmentation",
                                                 "affine on every sample"]  # fmt: skip
    assert all(float(seconds) > 0 and float(rate) > 0 for _, seconds, rate in samples)
    assert "sample on the device" not in printed  # the device is the CPU: nothing more to time
    assert re.search(r"shipped model, batch 1 on cpu, \d+ threads: [0-9.]+ s/step", printed)
