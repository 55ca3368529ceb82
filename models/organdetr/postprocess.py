"""Decoding of network outputs into one detection per organ class (paper: best query per organ, no NMS)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DecodedOrgan:
    """The best query for one organ class, and the next best ones as alternatives for the user."""

    class_index: int  # 0-based organ index (label value - 1)
    score: float  # ranking score: presence x predicted IoU with a quality head, else the presence
    box: torch.Tensor  # [6] normalised (c0, c1, c2, s0, s1, s2)
    candidates: list[tuple[float, torch.Tensor]] = field(default_factory=list)  # (score, box), descending score
    presence: float = 0.0  # probability that the organ is in the input (presence head, else the query's class)
    box_source: str = "query"  # "query", or "segmentation" once refined by the segmentation branch


@torch.no_grad()
def decode_detections(outputs: dict[str, Any], top_k: int = 3) -> list[list[DecodedOrgan]]:
    """Per batch item, one :class:`DecodedOrgan` per class (ordered by class index).

    For class ``k`` the detection is the query with the highest score for ``k``: its softmax probability, times
    the predicted IoU of its box when the network has a quality head (IoU-aware ranking); the following
    ``top_k - 1`` queries by that score become its candidates. The organ's presence is the presence head's
    probability when the network has one, else the chosen query's class probability. A query may be the best one
    for several classes. Tensors come back as float32 on the CPU.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    probs = outputs["pred_logits"].float().softmax(-1)[..., :-1].cpu()  # [B, N, K], no-object dropped
    boxes = outputs["pred_boxes"].float().cpu()  # [B, N, 6]
    ranking = probs
    if "pred_quality" in outputs:
        ranking = probs * outputs["pred_quality"].float().sigmoid().cpu()[..., None]
    presence_probs = outputs["pred_presence"].float().sigmoid().cpu() if "pred_presence" in outputs else None
    scores, queries = ranking.topk(min(top_k, probs.shape[1]), dim=1)  # [B, k, K], descending along dim 1
    decoded = []
    for b in range(probs.shape[0]):
        organs = []
        for k in range(probs.shape[2]):
            ranked = [(float(scores[b, r, k]), boxes[b, queries[b, r, k]]) for r in range(scores.shape[1])]
            (score, box), *candidates = ranked
            presence = (
                float(presence_probs[b, k]) if presence_probs is not None else float(probs[b, queries[b, 0, k], k])
            )
            organs.append(DecodedOrgan(class_index=k, score=score, box=box, candidates=candidates, presence=presence))
        decoded.append(organs)
    return decoded
