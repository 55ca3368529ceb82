"""Dense Query Matching (DQM): one-to-many label assignment between object queries and ground-truth organs.

Each ground-truth organ is matched to ``1 + eta`` distinct queries, with

* ``rho = N / M`` queries per ground truth (``N`` queries, ``M`` ground-truth organs in the image),
* ``eta = ceil(dense_lambda * rho)``, capped by ``MatcherConfig.max_eta`` and by the number of queries so that
  ``(1 + eta) * M <= N`` (every positive is a different query).

This is the count the paper states ("1 + eta" positives per organ). The v1 research snapshot instead tiles the
ground truths ``ceil(lambda * N / M)`` times in total, i.e. ``eta`` rather than ``1 + eta`` positives, which with
``lambda = 0`` would match nothing; we follow the paper because then ``dense_lambda = 0`` is exactly the one-to-one
Hungarian matching of DETR, the baseline DQM is compared against. With ``M > N`` not every organ can get a query:
``eta = 0`` and the Hungarian algorithm picks the ``N`` cheapest one-to-one pairs.

The assignment is the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) on the ``N x M (1 + eta)``
cost matrix in which every ground-truth column is repeated ``1 + eta`` times; columns are mapped back to ground
truths afterwards. The cost of pairing query ``n`` with ground truth ``m`` is (v1 / DETR)::

    cost_class * (-p_n(class_m)) + cost_bbox * |box_n - box_m|_1 + cost_giou * (-GIoU3D(box_n, box_m))

with ``p_n`` the softmax class probabilities of query ``n`` and boxes in normalised center-size form.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from .box_ops import pairwise_giou
from .config import MatcherConfig

MatchIndices = tuple[torch.Tensor, torch.Tensor]

# Rounding applied to lambda * rho before the ceiling, so that float noise (0.3 * 10 = 3.0000000000000004)
# does not add a positive.
_RHO_DECIMALS = 9


def positives_per_target(num_queries: int, num_targets: int, dense_lambda: float = 0.2, max_eta: int = 5) -> int:
    """Number of queries matched to each ground truth, ``1 + eta`` (see the module docstring); 0 when ``M = 0``."""
    if num_targets == 0 or num_queries == 0:
        return 0
    eta = math.ceil(round(dense_lambda * num_queries / num_targets, _RHO_DECIMALS))
    eta = min(eta, max_eta, num_queries // num_targets - 1)
    return 1 + max(eta, 0)


class DenseQueryMatcher:
    """Assigns ``1 + eta`` distinct queries to every ground-truth organ by minimum total matching cost.

    It also accumulates the wall time it spends (``elapsed_seconds`` over ``calls``) so that training can report
    matching as a share of a training step.
    """

    def __init__(self, config: MatcherConfig) -> None:
        self.config = config
        self.elapsed_seconds = 0.0
        self.calls = 0

    def positives_per_target(self, num_queries: int, num_targets: int) -> int:
        """``1 + eta`` for this matcher's ``dense_lambda`` and ``max_eta``."""
        return positives_per_target(num_queries, num_targets, self.config.dense_lambda, self.config.max_eta)

    def cost_matrix(
        self, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor
    ) -> torch.Tensor:
        """Matching cost ``[N, M]`` of queries (``logits [N, K+1]``, ``boxes [N, 6]``) against ground truths."""
        probs = logits.float().softmax(-1)[:, labels]
        boxes, target_boxes = boxes.float(), target_boxes.float()
        cost_bbox = torch.cdist(boxes, target_boxes, p=1)
        cost_giou = -pairwise_giou(boxes, target_boxes)
        cfg = self.config
        return cfg.cost_class * (-probs) + cfg.cost_bbox * cost_bbox + cfg.cost_giou * cost_giou

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> list[MatchIndices]:
        """Per batch item, ``(query indices, target indices)`` as int64 CPU tensors sorted by query index."""
        start = time.perf_counter()
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch, num_queries = logits.shape[:2]
        counts = [target["labels"].numel() for target in targets]
        columns: Sequence[torch.Tensor] = []  # per sample: the batch's queries against its ground truths
        if sum(counts):
            # Every query of the batch against every ground truth of the batch in one go, and one transfer: a GPU
            # step waits once, not once per sample; each sample then takes its own columns.
            labels = torch.cat([target["labels"] for target in targets]).to(logits.device)
            target_boxes = torch.cat([target["boxes"] for target in targets]).to(logits.device)
            every = self.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), labels, target_boxes)
            columns = every.view(batch, num_queries, -1).cpu().split(counts, dim=2)
        indices = []
        for b, num_targets in enumerate(counts):
            if num_targets == 0:
                empty = torch.zeros(0, dtype=torch.long)
                indices.append((empty, empty.clone()))
                continue
            repeats = self.positives_per_target(num_queries, num_targets)
            # Column j of the repeated matrix is ground truth j // repeats.
            cost = columns[b][b]  # sample b's queries against sample b's ground truths
            rows, cols = linear_sum_assignment(cost.repeat_interleave(repeats, dim=1).numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols // repeats, dtype=torch.long))
            )
        self.elapsed_seconds += time.perf_counter() - start
        self.calls += 1
        return indices

    def reset_timing(self) -> None:
        """Start a new measurement of ``elapsed_seconds`` / ``calls``."""
        self.elapsed_seconds = 0.0
        self.calls = 0


def time_matching(
    matcher: DenseQueryMatcher, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]], repeats: int = 20
) -> float:
    """Median wall time in seconds of one matching of ``outputs`` against ``targets`` (final decoder layer only).

    A training step matches the final layer and every auxiliary layer, so multiply by ``1 + len(aux_outputs)``
    to get the matching time per step.
    """
    matcher(outputs, targets)  # warm-up: first-call overheads (allocations, lazy imports) are not matching time
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        matcher(outputs, targets)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
