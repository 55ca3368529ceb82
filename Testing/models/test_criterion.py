"""SetCriterion: hand-computed classification and box losses, partial-label masking, segmentation channels."""

from __future__ import annotations

import math

import pytest
import torch
from organdetr.box_ops import boxes_from_label_map
from organdetr.config import LossConfig, MatcherConfig
from organdetr.criterion import SetCriterion
from organdetr.matcher import DenseQueryMatcher
from organdetr.organ_detr import build_model
from organdetr.segmentation_branch import FineLogits

NUM_CLASSES = 3
GT_BOX = [0.5, 0.5, 0.5, 0.2, 0.2, 0.2]
# Query 0 is GT_BOX shifted by 0.05 along axis 0: intersection 0.15 x 0.2 x 0.2 = 0.006, union 0.010, IoU 0.6 and the
# enclosing box equals the union, so GIoU = 0.6. Query 1 is far away and stays unmatched.
QUERY_BOXES = [[0.55, 0.5, 0.5, 0.2, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]
QUERY_LOGITS = [[2.0, 0.5, 1.0, -1.0], [0.3, -0.2, 1.5, 0.7]]


def one_to_one_criterion(**loss_options) -> SetCriterion:
    return SetCriterion(NUM_CLASSES, DenseQueryMatcher(MatcherConfig(dense_lambda=0.0)), LossConfig(**loss_options))


def tiny_case(annotated: list[bool]) -> tuple[dict, list[dict]]:
    outputs = {
        "pred_logits": torch.tensor([QUERY_LOGITS], requires_grad=True),
        "pred_boxes": torch.tensor([QUERY_BOXES]),
    }
    target = {"labels": torch.tensor([0]), "boxes": torch.tensor([GT_BOX]), "annotated": torch.tensor(annotated)}
    return outputs, [target]


def neg_log_softmax(logits: list[float], index: int, keep: list[int]) -> float:
    return -logits[index] + math.log(sum(math.exp(logits[k]) for k in keep))


@pytest.mark.parametrize("annotated", [[True, True, True], [True, True, False]])
def test_classification_and_box_losses_by_hand(annotated: list[bool]) -> None:
    outputs, targets = tiny_case(annotated)
    losses = one_to_one_criterion()(outputs, targets)
    organ_weight, background_weight = LossConfig().organ_class_weight, LossConfig().background_class_weight
    matched = neg_log_softmax(QUERY_LOGITS[0], 0, keep=[0, 1, 2, 3])  # matched query: always all classes
    # The unmatched query's target is "no object" (index 3); unannotated organ logits leave its softmax.
    unmatched = neg_log_softmax(QUERY_LOGITS[1], 3, keep=[k for k in range(4) if k == 3 or annotated[k]])
    expected = (organ_weight * matched + background_weight * unmatched) / (organ_weight + background_weight)
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-6)
    assert losses["loss_bbox"].item() == pytest.approx(0.05, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.4, abs=1e-4)  # MONAI adds a small epsilon
    assert "loss_seg" not in losses  # no label map, no segmentation logits


def test_unannotated_logit_of_unmatched_query_gets_no_gradient() -> None:
    outputs, targets = tiny_case([True, True, False])
    one_to_one_criterion()(outputs, targets)["loss_class"].backward()
    grad = outputs["pred_logits"].grad[0]
    assert float(grad[1, 2]) == 0.0  # unmatched query, unannotated class 2
    assert float(grad[0, 2]) != 0.0  # matched query: unaffected by the mask
    assert torch.isfinite(grad).all()

    outputs, targets = tiny_case([True, True, True])
    one_to_one_criterion()(outputs, targets)["loss_class"].backward()
    assert float(outputs["pred_logits"].grad[0, 1, 2]) > 0.0  # annotated: pushed down towards "no object"


def seg_case(annotated: list[bool], seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    generator = torch.Generator().manual_seed(seed)
    label_map = torch.zeros(8, 8, 8, dtype=torch.long)
    label_map[1:4, 1:5, 2:6] = 1
    label_map[5:8, 4:7, 1:3] = 2  # label 3 (class 2) does not occur: it may be unannotated
    seg_logits = [
        torch.randn(1, NUM_CLASSES + 1, *size, generator=generator).requires_grad_() for size in [(8, 8, 8), (4, 4, 4)]
    ]
    target = {
        "labels": torch.zeros(0, dtype=torch.long),
        "boxes": torch.zeros(0, 6),
        "annotated": torch.tensor(annotated),
        "label_map": label_map,
    }
    return seg_logits, [target]


def test_segmentation_loss_ignores_unannotated_channels(make_outputs) -> None:
    criterion = one_to_one_criterion()
    outputs = make_outputs(1, 4, NUM_CLASSES)
    seg_logits, targets = seg_case([True, True, False])
    loss = criterion({**outputs, "seg_logits": seg_logits}, targets)["loss_seg"]
    loss.backward()
    assert all(float(level.grad[:, 3].abs().max()) == 0.0 for level in seg_logits)
    assert all(float(level.grad[:, :3].abs().max()) > 0.0 for level in seg_logits)
    changed = [level.detach().clone() for level in seg_logits]
    for level in changed:
        level[:, 3] += 5.0
    assert float(criterion({**outputs, "seg_logits": changed}, targets)["loss_seg"]) == loss.item()

    seg_logits, targets = seg_case([True, True, True])
    criterion({**outputs, "seg_logits": seg_logits}, targets)["loss_seg"].backward()
    assert all(float(level.grad[:, 3].abs().max()) > 0.0 for level in seg_logits)


def hand_dice_loss(probs: torch.Tensor, label_map: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """Mean over ``channels`` of ``1 - 2 |P G| / (|P| + |G|)`` (MONAI's smoothing terms are 1e-5)."""
    terms = []
    for k in channels:
        truth = (label_map == k).float()
        terms.append(1 - (2 * (probs[0, k] * truth).sum() + 1e-5) / (probs[0, k].sum() + truth.sum() + 1e-5))
    return torch.stack(terms).mean()


def test_segmentation_loss_is_cross_entropy_plus_dice_of_present_organs(make_outputs) -> None:
    """Kept channels [background, organ 1, organ 2]: cross-entropy over them plus the Dice of organs 1 and 2."""
    seg_logits, targets = seg_case([True, True, False], seed=1)
    finest, label_map = seg_logits[0].detach(), targets[0]["label_map"]
    loss = one_to_one_criterion()({**make_outputs(1, 4, NUM_CLASSES), "seg_logits": [finest]}, targets)["loss_seg"]
    kept = finest[:, :3]
    expected = torch.nn.functional.cross_entropy(kept, label_map[None]) + hand_dice_loss(
        kept.softmax(1), label_map, [1, 2]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def organ2_weighted_criterion(weight: float) -> SetCriterion:
    """One-to-one matching; organ 2's voxels weigh ``weight`` in the segmentation cross-entropy."""
    names = [f"organ{k}" for k in range(1, NUM_CLASSES + 1)]
    config = LossConfig(seg_class_weights={"organ2": weight})
    return SetCriterion(NUM_CLASSES, DenseQueryMatcher(MatcherConfig(dense_lambda=0.0)), config, class_names=names)


def test_segmentation_class_weights_weigh_an_organs_voxels_in_the_cross_entropy(make_outputs) -> None:
    """Organ 2 weighs 30: the cross-entropy is the weighted mean over voxels (weights of their true classes)."""
    seg_logits, targets = seg_case([True, True, False], seed=1)
    finest, label_map = seg_logits[0].detach(), targets[0]["label_map"]
    criterion = organ2_weighted_criterion(30.0)
    loss = criterion({**make_outputs(1, 4, NUM_CLASSES), "seg_logits": [finest]}, targets)["loss_seg"]
    kept = finest[:, :3]
    per_voxel = -kept.log_softmax(1).gather(1, label_map[None, None]).flatten()
    weights = torch.where(label_map.flatten() == 2, 30.0, 1.0)
    assert (label_map == 2).any() and (label_map != 2).any()
    weighted_cross_entropy = (per_voxel * weights).sum() / weights.sum()
    expected = weighted_cross_entropy + hand_dice_loss(kept.softmax(1), label_map, [1, 2])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="seg_class_weights names 'organ2'"):
        SetCriterion(NUM_CLASSES, DenseQueryMatcher(MatcherConfig()), LossConfig(seg_class_weights={"organ2": 2.0}))


def test_segmentation_loss_of_a_batch_is_the_mean_of_its_samples(make_outputs) -> None:
    """The batch is computed at once: each sample keeps its own annotated channels, its own weighted voxel mean and
    its own present organs (sample 0 annotates organs 1-2 and has no organ 3; sample 1 annotates all three, has no
    organ 1 and fewer voxels of the heavy organ 2)."""
    criterion = organ2_weighted_criterion(7.0)
    first_logits, (first,) = seg_case([True, True, False], seed=3)
    second_logits, (second,) = seg_case([True, True, True], seed=4)
    second["label_map"] = torch.where(second["label_map"] == 1, 3, second["label_map"])
    second["label_map"][5:8, 4:7, 1] = 0  # fewer organ-2 voxels: the samples' weighted voxel means differ
    batch = [torch.cat([a, b]).detach().requires_grad_() for a, b in zip(first_logits, second_logits, strict=True)]
    outputs = make_outputs(2, 4, NUM_CLASSES)
    together = criterion({**outputs, "seg_logits": batch}, [first, second])["loss_seg"]
    alone = [
        criterion({**make_outputs(1, 4, NUM_CLASSES), "seg_logits": [level[b : b + 1] for level in batch]}, [t])
        for b, t in enumerate([first, second])
    ]
    assert together.item() == pytest.approx((alone[0]["loss_seg"] + alone[1]["loss_seg"]).item() / 2, rel=1e-6)
    together.backward()
    assert all(float(level.grad[0, 3].abs().max()) == 0.0 for level in batch)  # unannotated in sample 0 only
    assert all(float(level.grad[1, 3].abs().max()) > 0.0 for level in batch)
    assert torch.isfinite(torch.cat([level.grad.flatten() for level in batch])).all()


def test_annotated_organ_missing_from_the_sample_has_no_dice_term(make_outputs) -> None:
    """Organ 3 is annotated but has no voxel here (the window left it out): it is background in the cross-entropy,
    and its empty Dice target, which would push its probability down everywhere, is not counted."""
    seg_logits, targets = seg_case([True, True, True], seed=2)
    finest, label_map = seg_logits[0].detach(), targets[0]["label_map"]
    loss = one_to_one_criterion()({**make_outputs(1, 4, NUM_CLASSES), "seg_logits": [finest]}, targets)["loss_seg"]
    probs = finest.softmax(1)
    cross_entropy = torch.nn.functional.cross_entropy(finest, label_map[None])
    assert loss.item() == pytest.approx((cross_entropy + hand_dice_loss(probs, label_map, [1, 2])).item(), rel=1e-5)
    with_empty_target = cross_entropy + hand_dice_loss(probs, label_map, [1, 2, 3])
    assert loss.item() != pytest.approx(with_empty_target.item(), rel=1e-3)


def test_total_includes_weighted_aux_and_seg_terms(make_outputs, make_targets) -> None:
    outputs = make_outputs(2, 20, NUM_CLASSES, aux_layers=2, seed=4)
    targets = make_targets([3, 2], NUM_CLASSES)
    seg_logits, seg_targets = seg_case([True, True, True])
    outputs["seg_logits"] = [torch.cat([level, level]) for level in seg_logits]
    for target in targets:
        target["label_map"] = seg_targets[0]["label_map"]
    config = LossConfig()
    losses = SetCriterion(NUM_CLASSES, DenseQueryMatcher(MatcherConfig()), config)(outputs, targets)
    names = ["loss_class", "loss_bbox", "loss_giou"]
    expected_keys = {"loss", "loss_seg", *names, *(f"{n}_aux{i}" for n in names for i in range(2))}
    assert set(losses) == expected_keys
    weights = {"loss_class": config.weight_class, "loss_bbox": config.weight_bbox, "loss_giou": config.weight_giou}
    expected = config.weight_seg * losses["loss_seg"] + sum(
        weights[n] * (losses[n] + losses[f"{n}_aux0"] + losses[f"{n}_aux1"]) for n in names
    )
    assert losses["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    without_aux = SetCriterion(NUM_CLASSES, DenseQueryMatcher(MatcherConfig()), LossConfig(aux_loss=False))
    assert set(without_aux(outputs, targets)) == {"loss", "loss_seg", *names}


def test_images_without_organs(make_outputs) -> None:
    outputs = make_outputs(1, 6, NUM_CLASSES)
    outputs["pred_logits"].requires_grad_()
    target = {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 6)}
    losses = one_to_one_criterion()(outputs, [target])
    assert losses["loss_bbox"].item() == losses["loss_giou"].item() == 0.0
    losses["loss"].backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()


def test_loss_decreases_when_training_the_real_network(tiny_config, head_neck_volume) -> None:
    """A few AdamW steps of the real network on one real CT lower the total loss on that CT."""
    torch.manual_seed(0)
    volume, label_map = head_neck_volume
    classes, boxes = boxes_from_label_map(label_map, tiny_config.model.num_classes)
    assert classes.numel() >= 5  # pt_201 shows most of the 7 organs at 32^3
    targets = [{"labels": classes, "boxes": boxes, "label_map": label_map}]
    model = build_model(tiny_config.model)
    criterion = SetCriterion(tiny_config.model.num_classes, DenseQueryMatcher(tiny_config.matcher), tiny_config.loss)
    images = volume.image[None]

    def evaluation_loss() -> float:
        model.eval()
        with torch.no_grad():
            return criterion(model(images, return_segmentation=True), targets)["loss"].item()

    before = evaluation_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(4):
        model.train()
        losses = criterion(model(images), targets)
        assert "loss_seg" in losses and "loss_class_aux0" in losses
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    after = evaluation_loss()
    assert after < 0.9 * before, (before, after)


def test_quality_loss_targets_the_matched_box_iou_by_hand() -> None:
    outputs, targets = tiny_case([True, True, True])
    outputs["pred_quality"] = torch.tensor([[0.4, -3.0]], requires_grad=True)
    losses = one_to_one_criterion()(outputs, targets)
    # Only the matched query 0 is trained, towards its IoU 0.6 (binary cross-entropy with a soft target).
    p = 1.0 / (1.0 + math.exp(-0.4))
    expected = -(0.6 * math.log(p) + 0.4 * math.log(1.0 - p))
    assert losses["loss_quality"].item() == pytest.approx(expected, abs=1e-4)
    losses["loss_quality"].backward()
    assert outputs["pred_quality"].grad[0, 1] == 0  # the unmatched query's quality is not trained
    assert outputs["pred_quality"].grad[0, 0] == pytest.approx(p - 0.6, abs=1e-4)


def test_segmentation_branch_loss_is_weighted_into_the_total(make_outputs) -> None:
    outputs = make_outputs(1, 4, NUM_CLASSES)
    label_map = torch.zeros(8, 8, 8, dtype=torch.long)
    label_map[2:5, 2:6, 3:5] = 1
    outputs["seg_full_logits"] = torch.randn(1, NUM_CLASSES + 1, 8, 8, 8)
    labels, boxes = boxes_from_label_map(label_map, NUM_CLASSES)
    target = {"labels": labels, "boxes": boxes, "annotated": torch.tensor([True, False, True]), "label_map": label_map}
    criterion = one_to_one_criterion(weight_seg_branch=3.0)
    losses = criterion(outputs, [target])
    assert losses["loss_seg_branch"].item() == pytest.approx(
        criterion.loss_seg([outputs["seg_full_logits"]], [target]).item()
    )
    detection = sum(criterion.weights[name] * losses[name] for name in ("loss_class", "loss_bbox", "loss_giou"))
    assert losses["loss"].item() == pytest.approx((detection + 3.0 * losses["loss_seg_branch"]).item(), rel=1e-6)


def test_fine_stage_loss_is_the_segmentation_loss_of_each_region(make_outputs) -> None:
    label_map = torch.zeros(8, 8, 8, dtype=torch.long)
    label_map[2:5, 2:6, 3:5] = 1
    labels, boxes = boxes_from_label_map(label_map, NUM_CLASSES)
    target = {"labels": labels, "boxes": boxes, "annotated": torch.tensor([True, False, True]), "label_map": label_map}
    region = (slice(1, 7), slice(0, 8), slice(2, 6))
    logits = torch.randn(NUM_CLASSES + 1, 6, 8, 4)
    outputs = make_outputs(2, 4, NUM_CLASSES)
    outputs["seg_full_logits"] = torch.randn(2, NUM_CLASSES + 1, 4, 4, 4)
    outputs["seg_fine_logits"] = [FineLogits(region=region, logits=logits), None]  # the second sample: no organ seen
    criterion = one_to_one_criterion(weight_seg_fine=5.0)
    losses = criterion(outputs, [target, target])
    cropped = dict(target, label_map=label_map[region])
    expected = criterion.loss_seg([logits[None]], [cropped])  # only the sample with a region counts
    assert losses["loss_seg_fine"].item() == pytest.approx(expected.item())
    assert "loss_seg_fine" in losses and losses["loss"].item() > 5.0 * expected.item()
    outputs["seg_fine_logits"] = [None, None]
    assert criterion(outputs, [target, target])["loss_seg_fine"].item() == 0.0  # nothing to segment finer


def test_presence_loss_counts_annotated_organs_only_by_hand() -> None:
    outputs, targets = tiny_case([True, True, False])  # organ 0 present, organ 1 annotated but absent, 2 unknown
    outputs["pred_presence"] = torch.tensor([[1.0, 0.5, 4.0]], requires_grad=True)
    losses = one_to_one_criterion()(outputs, targets)

    def bce(logit: float, target: float) -> float:
        p = 1.0 / (1.0 + math.exp(-logit))
        return -(target * math.log(p) + (1 - target) * math.log(1 - p))

    assert losses["loss_presence"].item() == pytest.approx((bce(1.0, 1.0) + bce(0.5, 0.0)) / 2, abs=1e-5)
    losses["loss_presence"].backward()
    assert outputs["pred_presence"].grad[0, 2] == 0  # the unannotated organ is not trained either way
