"""Decoding: the best query per organ class, its score and the next best candidates."""

from __future__ import annotations

import pytest
import torch
from organdetr.postprocess import decode_detections


def test_best_query_per_class_and_descending_candidates(make_outputs) -> None:
    classes, queries = 4, 12
    outputs = make_outputs(2, queries, classes, seed=11)
    decoded = decode_detections(outputs, top_k=3)
    assert len(decoded) == 2
    for b, organs in enumerate(decoded):
        assert [organ.class_index for organ in organs] == list(range(classes))
        for organ in organs:
            probs = outputs["pred_logits"][b].softmax(-1)[:, organ.class_index]
            order = probs.argsort(descending=True)
            assert organ.score == pytest.approx(float(probs[order[0]]))
            assert torch.equal(organ.box, outputs["pred_boxes"][b, order[0]])
            assert len(organ.candidates) == 2
            scores = [score for score, _ in organ.candidates]
            assert scores == sorted(scores, reverse=True) and scores[0] <= organ.score
            for rank, (score, box) in enumerate(organ.candidates, start=1):
                assert score == pytest.approx(float(probs[order[rank]]))
                assert torch.equal(box, outputs["pred_boxes"][b, order[rank]])


def test_one_query_can_win_several_classes(make_outputs) -> None:
    outputs = make_outputs(1, 5, 3, seed=12)
    # Query 2 has about 1/3 probability for each organ; every other query is confidently "no object".
    outputs["pred_logits"][0] = torch.tensor([-10.0, -10.0, -10.0, 10.0])
    outputs["pred_logits"][0, 2] = torch.tensor([10.0, 10.0, 10.0, -10.0])
    organs = decode_detections(outputs, top_k=1)[0]
    for organ in organs:
        assert torch.equal(organ.box, outputs["pred_boxes"][0, 2])
        assert organ.score == pytest.approx(1 / 3)
        assert organ.candidates == []


def test_top_k_larger_than_queries_and_invalid(make_outputs) -> None:
    outputs = make_outputs(1, 3, 2)
    assert all(len(organ.candidates) == 2 for organ in decode_detections(outputs, top_k=10)[0])
    with pytest.raises(ValueError, match="top_k"):
        decode_detections(outputs, top_k=0)


def test_quality_head_reranks_queries_but_presence_stays_the_class_probability() -> None:
    # Two queries for one class: query 0 is more probable, query 1's box is predicted far better.
    outputs = {
        "pred_logits": torch.tensor([[[2.0, 0.0], [1.5, 0.0]]]),
        "pred_boxes": torch.tensor([[[0.5] * 6, [0.4] * 6]]),
        "pred_quality": torch.tensor([[-3.0, 3.0]]),
    }
    (organ,) = decode_detections(outputs, top_k=2)[0]
    probabilities = outputs["pred_logits"].softmax(-1)[0, :, 0]
    quality = outputs["pred_quality"].sigmoid()[0]
    assert torch.equal(organ.box, outputs["pred_boxes"][0, 1])
    assert organ.score == pytest.approx(float(probabilities[1] * quality[1]))
    assert organ.presence == pytest.approx(float(probabilities[1]))
    assert organ.candidates[0][0] == pytest.approx(float(probabilities[0] * quality[0]))


def test_presence_head_gives_the_presence() -> None:
    outputs = {
        "pred_logits": torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]),
        "pred_boxes": torch.tensor([[[0.5] * 6, [0.4] * 6]]),
        "pred_presence": torch.tensor([[-2.0, 3.0]]),
    }
    organs = decode_detections(outputs)[0]
    assert [o.presence for o in organs] == pytest.approx(torch.tensor([-2.0, 3.0]).sigmoid().tolist())
    assert organs[0].score == pytest.approx(float(outputs["pred_logits"].softmax(-1)[0, 0, 0]))  # ranking unchanged
