"""Decoding of network outputs into one detection per organ class (paper: best query per organ, no NMS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DecodedOrgan:
    """The best query for one organ class, and the next best ones as alternatives for the user."""

    class_index: int  # 0-based organ index (label value - 1)
    score: float  # softmax probability of this class for the chosen query
    box: torch.Tensor  # [6] normalised (c0, c1, c2, s0, s1, s2)
    candidates: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (score, box), descending score


@torch.no_grad()
def decode_detections(outputs: dict[str, Any], top_k: int = 3) -> list[list[DecodedOrgan]]:
    """Per batch item, one :class:`DecodedOrgan` per class (ordered by class index).

    For class ``k`` the detection is the query with the highest softmax probability of ``k``; the following
    ``top_k - 1`` queries by that probability become its candidates. A query may be the best one for several
    classes. Tensors come back as float32 on the CPU.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    probs = outputs["pred_logits"].float().softmax(-1)[..., :-1].cpu()  # [B, N, K], no-object dropped
    boxes = outputs["pred_boxes"].float().cpu()  # [B, N, 6]
    scores, queries = probs.topk(min(top_k, probs.shape[1]), dim=1)  # [B, k, K], descending along dim 1
    decoded = []
    for b in range(probs.shape[0]):
        organs = []
        for k in range(probs.shape[2]):
            ranked = [(float(scores[b, r, k]), boxes[b, queries[b, r, k]]) for r in range(scores.shape[1])]
            (score, box), *candidates = ranked
            organs.append(DecodedOrgan(class_index=k, score=score, box=box, candidates=candidates))
        decoded.append(organs)
    return decoded
