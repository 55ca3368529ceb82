"""The box error budget end to end: the shipped model on real CT cases, and the invariants its figures must keep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import box_error_budget
from openkbp_dataset import write_dataset_json


def test_ranking_and_corner_figures(tmp_path, data_dir, monkeypatch, capsys) -> None:
    data, figures_path = write_dataset_json(tmp_path, data_dir), tmp_path / "budget.json"
    arguments = ["--data", str(data), "--split", "training", "--device", "cpu", "--json", str(figures_path)]
    monkeypatch.setattr(sys, "argv", ["box_error_budget.py", *arguments])
    box_error_budget.main()
    assert "2 training cases" in capsys.readouterr().out
    figures = json.loads(figures_path.read_text(encoding="utf-8"))
    for boxes in ("refined", "query"):
        rows = {scoring: figures["ranking"][f"{boxes}, {scoring}"] for scoring in box_error_budget.SCORINGS}
        # Scores by true IoU put every box above every worse one: no ranking does better at any threshold.
        for key in ("mAP", "AP50", "AP75"):
            assert rows["true IoU"][key] >= max(rows["model"][key], rows["constant"][key]) - 1e-9
        assert rows["model"]["mAR"] == pytest.approx(rows["true IoU"]["mAR"]) == pytest.approx(rows["constant"]["mAR"])
    corners = figures["corner_errors_voxels"]
    assert corners, "no organ of pt_201 overlaps a segmented component"
    for organ in corners.values():
        for corner in box_error_budget.CORNERS:
            better = organ["better of query and component"][corner]
            assert 0 <= better <= min(organ["query"][corner], organ["component"][corner]) + 1e-6
