"""Dense Query Matching: number of positives, one-to-one baseline, optimality, empty images."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.data.box_utils import box_giou
from organdetr import matcher as matcher_module
from organdetr.config import MatcherConfig
from organdetr.matcher import DenseQueryMatcher, positives_per_target, time_matching
from scipy.optimize import linear_sum_assignment


@pytest.mark.parametrize(
    ("queries", "targets", "dense_lambda", "expected"),
    [
        (100, 10, 0.2, 3),  # rho 10, eta = ceil(2) = 2
        (60, 7, 0.2, 3),  # rho 8.57, eta = ceil(1.71) = 2
        (20, 7, 0.5, 2),  # eta = ceil(1.43) = 2, but 3 * 7 > 20 queries: eta capped to 20 // 7 - 1 = 1
        (100, 10, 0.9, 6),  # eta = 9 capped by max_eta 5
        (100, 10, 0.3, 4),  # 0.3 * 10 is 3.0000000000000004 in floats; eta must still be 3
        (100, 10, 0.0, 1),  # one-to-one
        (5, 7, 0.2, 1),  # more organs than queries: at most one query each
        (100, 0, 0.2, 0),  # nothing to match
    ],
)
def test_positives_per_target(queries: int, targets: int, dense_lambda: float, expected: int) -> None:
    assert positives_per_target(queries, targets, dense_lambda, max_eta=5) == expected
    matcher = DenseQueryMatcher(MatcherConfig(dense_lambda=dense_lambda, max_eta=5))
    assert matcher.positives_per_target(queries, targets) == expected


@pytest.mark.parametrize(
    ("queries", "counts", "dense_lambda"), [(100, [10, 3], 0.2), (60, [7, 1], 0.2), (20, [7, 6], 0.5)]
)
def test_each_target_gets_its_positives_and_queries_are_used_once(
    make_outputs, make_targets, queries: int, counts: list[int], dense_lambda: float
) -> None:
    classes = 10
    outputs = make_outputs(len(counts), queries, classes)
    targets = make_targets(counts, classes)
    matcher = DenseQueryMatcher(MatcherConfig(dense_lambda=dense_lambda))
    for (query_idx, target_idx), count in zip(matcher(outputs, targets), counts, strict=True):
        positives = matcher.positives_per_target(queries, count)
        assert query_idx.dtype == target_idx.dtype == torch.long
        assert query_idx.unique().numel() == query_idx.numel() == positives * count
        assert torch.bincount(target_idx, minlength=count).tolist() == [positives] * count
        assert int(query_idx.max()) < queries


def independent_cost(outputs: dict, target: dict, config: MatcherConfig) -> torch.Tensor:
    """The matching cost written out from its definition, for one batch item (corners computed by hand)."""
    probs = outputs["pred_logits"][0].softmax(-1)[:, target["labels"]]
    boxes, gt = outputs["pred_boxes"][0], target["boxes"]
    l1 = (boxes[:, None, :] - gt[None, :, :]).abs().sum(-1)

    def corners(b: torch.Tensor) -> torch.Tensor:
        return torch.cat([b[:, :3] - b[:, 3:] / 2, b[:, :3] + b[:, 3:] / 2], dim=1)

    giou = box_giou(corners(boxes), corners(gt))
    return -config.cost_class * probs + config.cost_bbox * l1 - config.cost_giou * giou


def test_lambda_zero_is_plain_hungarian(make_outputs, make_targets) -> None:
    config = MatcherConfig(dense_lambda=0.0)
    outputs = make_outputs(1, 30, 7, seed=3)
    target = make_targets([7], 7, seed=4)[0]
    cost = independent_cost(outputs, target, config)
    matcher = DenseQueryMatcher(config)
    torch.testing.assert_close(
        matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_boxes"][0], target["labels"], target["boxes"]),
        cost,
    )
    rows, cols = linear_sum_assignment(cost.numpy())
    query_idx, target_idx = matcher(outputs, [target])[0]
    assert query_idx.tolist() == rows.tolist()
    assert target_idx.tolist() == cols.tolist()


def test_dense_assignment_is_optimal_by_brute_force(make_outputs, make_targets) -> None:
    config = MatcherConfig(dense_lambda=0.2)
    outputs = make_outputs(1, 7, 4, seed=5)
    target = make_targets([2], 4, seed=6)[0]
    assert positives_per_target(7, 2, config.dense_lambda, config.max_eta) == 2  # rho 3.5, eta = ceil(0.7) = 1
    cost = independent_cost(outputs, target, config)
    slots = [0, 0, 1, 1]  # two positives per ground truth
    best = min(
        sum(float(cost[q, t]) for q, t in zip(queries, slots, strict=True))
        for queries in itertools.permutations(range(7), len(slots))
    )
    query_idx, target_idx = DenseQueryMatcher(config)(outputs, [target])[0]
    assert float(cost[query_idx, target_idx].sum()) == pytest.approx(best, abs=1e-5)


def test_matching_prefers_overlapping_queries(make_outputs) -> None:
    """Queries lying exactly on a ground truth with a confident class are its positives."""
    outputs = make_outputs(1, 20, 3, seed=7)
    gt = torch.tensor([[0.3, 0.3, 0.3, 0.2, 0.2, 0.2], [0.7, 0.6, 0.5, 0.3, 0.2, 0.1]])
    labels = torch.tensor([2, 0])
    chosen = {0: [4, 11], 1: [2, 17]}  # rho 10, lambda 0.1: eta 1, so 2 positives each
    for target, queries in chosen.items():
        outputs["pred_boxes"][0, queries] = gt[target]
        outputs["pred_logits"][0, queries, labels[target]] = 10.0
    query_idx, target_idx = DenseQueryMatcher(MatcherConfig(dense_lambda=0.1))(
        outputs, [{"labels": labels, "boxes": gt}]
    )[0]
    for target, queries in chosen.items():
        assert sorted(query_idx[target_idx == target].tolist()) == queries


def test_a_batch_is_matched_as_its_samples_alone(make_outputs, make_targets) -> None:
    """The batch's costs are computed together (every query against every ground truth of the batch): each sample
    must still be matched on its own columns only, an empty sample included."""
    outputs = make_outputs(3, 25, 7, seed=8)
    targets = make_targets([4, 0, 6], 7, seed=9)
    matcher = DenseQueryMatcher(MatcherConfig(dense_lambda=0.2))
    together = matcher(outputs, targets)
    for b, target in enumerate(targets):
        alone = matcher({key: outputs[key][b : b + 1] for key in ("pred_logits", "pred_boxes")}, [target])[0]
        assert [t.tolist() for t in together[b]] == [t.tolist() for t in alone]
    assert together[1][0].numel() == 0 and together[0][0].numel() == 4 * matcher.positives_per_target(25, 4)


def test_empty_targets_give_empty_matches(make_outputs) -> None:
    outputs = make_outputs(2, 10, 3)
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 6)}] * 2
    for query_idx, target_idx in DenseQueryMatcher(MatcherConfig())(outputs, targets):
        assert query_idx.numel() == target_idx.numel() == 0


class FakeClock:
    """Stands in for ``time`` in the matcher module: the time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_matcher_records_its_time(make_outputs, make_targets, monkeypatch) -> None:
    """Matchings that take 20 s (the warm-up), 2 s, 16 s and 6 s: the median of the timed ones is 6 s (the mean
    would be 8 s, with the warm-up 11 s), and the matcher's own total counts all four."""
    clock = FakeClock()
    monkeypatch.setattr(matcher_module, "time", clock)
    matcher = DenseQueryMatcher(MatcherConfig())
    seconds_per_matching = iter([20.0, 2.0, 16.0, 6.0])  # the batch's costs are computed at once
    real_cost_matrix = matcher.cost_matrix

    def slow_cost_matrix(*args):
        clock.now += next(seconds_per_matching)
        return real_cost_matrix(*args)

    monkeypatch.setattr(matcher, "cost_matrix", slow_cost_matrix)
    seconds = time_matching(matcher, make_outputs(2, 60, 7), make_targets([7, 5], 7), repeats=3)
    assert seconds == 6.0
    assert (matcher.calls, matcher.elapsed_seconds) == (4, 20.0 + 2.0 + 16.0 + 6.0)
    matcher.reset_timing()
    assert (matcher.calls, matcher.elapsed_seconds) == (0, 0.0)
