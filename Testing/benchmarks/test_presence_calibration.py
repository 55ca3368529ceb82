"""The presence calibration's choice of vouching rule, by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from presence_calibration import Observation, choose_rule


def _obs(organ: str, present: bool, head: float, voxels: float) -> Observation:
    return Observation(case="c", scan="s", organ=organ, present=present, head=head, voxels=voxels)


def test_each_organ_gets_the_fraction_that_removes_absent_reports_without_missing_present_ones() -> None:
    observations = [
        # A: the head pattern-completes it where it is absent; the segmentation shows 10 voxels there, 100 where present
        _obs("A", False, 0.95, 10),
        _obs("A", True, 0.95, 100),
        _obs("A", True, 0.95, 100),
        # B: present but thinly segmented: vouching would miss it
        _obs("B", True, 0.9, 5),
        # C: always clearly segmented: vouching costs nothing, so it is kept (the larger fraction)
        _obs("C", True, 0.9, 1000),
    ]
    medians = {"A": 100.0, "B": 100.0, "C": 100.0}
    rule = choose_rule(observations, medians, fractions=(0.0, 0.5), thresholds=(0.8,), keep=1.0)
    assert rule.fractions == {"A": 0.5, "B": 0.0, "C": 0.5}
    assert (rule.threshold, rule.absent_reported, rule.present_missed) == (0.8, 0, 0)


def test_a_missed_present_organ_is_allowed_only_within_the_budget() -> None:
    observations = [_obs("A", False, 0.95, 10), _obs("A", True, 0.95, 40), _obs("A", True, 0.95, 100)]
    # N = 50 removes the absent report but misses the 40-voxel present organ (0.95 x 0.8 < 0.8).
    strict = choose_rule(observations, {"A": 100.0}, fractions=(0.0, 0.5), thresholds=(0.8,), keep=1.0)
    assert (strict.fractions, strict.absent_reported, strict.present_missed) == ({"A": 0.0}, 1, 0)
    loose = choose_rule(observations, {"A": 100.0}, fractions=(0.0, 0.5), thresholds=(0.8,), keep=0.5)
    assert (loose.fractions, loose.absent_reported, loose.present_missed) == ({"A": 0.5}, 0, 1)
    with pytest.raises(SystemExit, match="no rule keeps"):
        choose_rule(observations, {"A": 100.0}, fractions=(0.5,), thresholds=(0.8,), keep=1.0)
