"""The shared inference path on a real CT with the real (untrained) network, and device selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from organdetr.config import DetectorConfig
from organdetr.errors import UserInputError
from organdetr.inference import BranchVoxelCounter, run_detector, segmentation_supported_presence, select_device
from organdetr.organ_detr import build_model
from organdetr.segmentation_branch import fine_regions
from organdetr.windows import Window


def test_run_detector_on_a_real_ct(tiny_config, head_neck_volume) -> None:
    volume, _ = head_neck_volume
    torch.manual_seed(0)
    model = build_model(tiny_config.model).train()
    result = run_detector(model, volume, torch.device("cpu"), tiny_config, top_k=2, segmentation=True)
    assert model.training  # mode restored for training loops that validate with this path
    assert [organ.class_index for organ in result.organs] == list(range(tiny_config.model.num_classes))
    for organ in result.organs:
        assert 0.0 <= organ.score <= 1.0 and organ.box.shape == (6,)
        assert len(organ.candidates) == 1
    assert result.segmentation is not None
    assert result.segmentation.shape == volume.network_shape and result.segmentation.dtype == torch.long
    assert int(result.segmentation.min()) >= 0 and int(result.segmentation.max()) <= tiny_config.model.num_classes
    # Eval mode is deterministic: the same volume gives the same detections.
    again = run_detector(model, volume, torch.device("cpu"), tiny_config, top_k=2)
    assert again.segmentation is None
    assert all(torch.equal(a.box, b.box) for a, b in zip(result.organs, again.organs, strict=True))


def test_segmentation_requires_heads(tiny_config, head_neck_volume) -> None:
    tiny_config.model.segmentation_heads = False
    model = build_model(tiny_config.model)
    with pytest.raises(UserInputError, match="no segmentation heads"):
        run_detector(model, head_neck_volume[0], torch.device("cpu"), tiny_config, segmentation=True)


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert select_device("cuda").type == "cuda"
    else:
        with pytest.raises(UserInputError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(UserInputError, match="unknown device"):
        select_device("tpu")


def test_segmentation_supported_presence_by_hand() -> None:
    # organ 1: 10 voxels, half of what vouches fully; organ 3: 30; organs 2 and 4: none (organ 4 is left to the head)
    vouched = segmentation_supported_presence([0.8, 0.9, 0.7, 0.6], [10.0, 0.0, 30.0, 0.0], min_voxels=[20, 20, 20, 0])
    assert vouched == pytest.approx([0.4, 0.0, 0.7, 0.6])


def _probabilities(label_grid: torch.Tensor, classes: int, confidence: float) -> torch.Tensor:
    """``[C, *grid]`` probabilities: ``confidence`` on each voxel's label, the rest spread over the other classes."""
    onehot = torch.nn.functional.one_hot(label_grid, classes).permute(3, 0, 1, 2).float()
    return onehot * confidence + (1 - onehot) * (1 - confidence) / (classes - 1)


def test_branch_voxels_are_stitched_on_the_branch_grid() -> None:
    """Two stride-2 windows of 8^3 over a volume of 4 x 12 x 8 network voxels (branch grid 2 x 6 x 4): both start 2
    voxels before the volume along axis 0 (their branch row 0 is padding); the second starts 4 voxels (2 branch
    voxels) into it along axis 1, so the windows share branch rows 2-3 of axis 1, where the surer one wins."""
    first, second = Window(start=(-2, 0, 0), size=(8, 8, 8)), Window(start=(-2, 4, 0), size=(8, 8, 8))
    labels_first = torch.zeros(4, 4, 4, dtype=torch.long)
    labels_first[0] = 2  # organ 2 only in the padding: never counted
    labels_first[1, :2] = 1  # organ 1 on 8 branch voxels that only this window sees
    labels_first[2, 2:] = 1  # organ 1 on the 8 shared branch voxels ...
    labels_second = torch.zeros(4, 4, 4, dtype=torch.long)
    labels_second[2, 0] = 1  # ... where the surer second window agrees on 4 of them (and says background on 4)
    labels_second[2, 2:] = 2  # organ 2 on 8 branch voxels that only the second window sees
    window_probabilities = [
        (first, _probabilities(labels_first, 3, 0.6)),
        (second, _probabilities(labels_second, 3, 0.9)),
    ]
    counter = BranchVoxelCounter((4, 12, 8))
    with pytest.raises(ValueError, match="no window"):
        counter.voxels()
    for window, probabilities in window_probabilities:
        counter.add(window, probabilities)
    voxels = counter.voxels()
    assert voxels.tolist() == [(8 + 4) * 8.0, 8 * 8.0]  # each branch voxel covers 2^3 network voxels


def test_coarsened_window_rounds_odd_starts_down() -> None:
    assert Window(start=(-3, 5, 4), size=(8, 8, 8)).coarsened((2, 2, 2)) == Window(start=(-2, 2, 2), size=(4, 4, 4))


def test_segmentation_branch_vouches_for_presence(tiny_config, head_neck_volume) -> None:
    """With ``min_segmented_voxels`` each organ's presence is the head's, scaled by its share of the segmentation."""
    volume, _ = head_neck_volume
    tiny_config.model.segmentation_branch.enabled = True
    tiny_config.model.presence_head = True
    torch.manual_seed(0)
    model = build_model(tiny_config.model).eval()
    head_alone = run_detector(model, volume, torch.device("cpu"), tiny_config)
    with torch.inference_mode():  # the volume is the one window: count the branch's stride-2 labels directly
        logits = model(volume.image[None], return_segmentation=True)["seg_full_logits"]
    assert logits.shape[2:] == tuple(n // 2 for n in volume.network_shape)
    counts = torch.bincount(logits[0].argmax(0).flatten(), minlength=tiny_config.model.num_classes + 1)[1:] * 8
    min_voxels = int(counts.max()) + 1  # no organ fully vouched for
    names = tiny_config.class_names
    tiny_config.presence.min_segmented_voxels = {name: min_voxels for name in names[:-1]}  # the last: head alone
    vouched = run_detector(model, volume, torch.device("cpu"), tiny_config)
    expected = [p * int(n) / min_voxels for p, n in zip(head_alone.presence[:-1], counts[:-1], strict=True)]
    assert vouched.presence == pytest.approx([*expected, head_alone.presence[-1]])
    assert vouched.presence != pytest.approx(head_alone.presence)
    assert vouched.head_presence == head_alone.presence == head_alone.head_presence
    assert vouched.segmented_voxels == counts.float().tolist() and head_alone.segmented_voxels is None


def test_vouching_organs_must_be_the_models(tiny_config) -> None:
    data = tiny_config.to_dict()
    data["presence"]["min_segmented_voxels"] = {"Liver": 10}
    with pytest.raises(ValueError, match=r"organs the model does not have: \['Liver'\]"):
        DetectorConfig.from_dict(data)
    data = tiny_config.to_dict()
    data["loss"]["seg_class_weights"] = {"Spleen": 2.0}
    with pytest.raises(ValueError, match=r"loss.seg_class_weights names organs the model does not have"):
        DetectorConfig.from_dict(data)
    data["loss"]["seg_class_weights"] = {"Esophagus": -1.0}
    with pytest.raises(ValueError, match=r"seg_class_weights must be positive"):
        DetectorConfig.from_dict(data)


@pytest.mark.parametrize("output_stride", [2, 1])
def test_segmentation_is_computed_in_the_branch_region(tiny_config, head_neck_volume, output_stride) -> None:
    """Inside the region where the stride-2 logits see an organ, the stitched labels are those of the whole grid
    (the stride-2 probabilities upsampled, or the fine stage's); outside it, background."""
    volume, _ = head_neck_volume
    branch = tiny_config.model.segmentation_branch
    branch.enabled, branch.output_stride = True, output_stride
    tiny_config.refinement.enabled = False
    torch.manual_seed(0)
    model = build_model(tiny_config.model).eval()
    with torch.inference_mode():  # the volume is the one window
        outputs = model(volume.image[None], return_segmentation=True)
    coarse = outputs["seg_full_logits"]
    # Random weights see organs everywhere at the default threshold: take one that leaves a real region.
    branch.fine_region_threshold = float((1 - coarse.softmax(dim=1)[:, 0]).flatten().quantile(0.97))
    (region,) = fine_regions(coarse.softmax(dim=1), branch.fine_region_threshold, branch.fine_region_margin)
    inside = tuple(slice(2 * r.start, 2 * r.stop) for r in region)
    with torch.inference_mode():
        outputs = model(volume.image[None], return_segmentation=True)
    if output_stride == 1:
        (fine,) = outputs["seg_fine_logits"]
        assert fine.region == inside
        expected = fine.logits.argmax(dim=0)
    else:
        upsampled = F.interpolate(coarse.softmax(dim=1), size=volume.network_shape, mode="trilinear")
        expected = upsampled[0].argmax(dim=0)[inside]
    labels = run_detector(model, volume, torch.device("cpu"), tiny_config, segmentation=True).segmentation
    assert torch.equal(labels[inside], expected)
    outside = torch.ones(volume.network_shape, dtype=torch.bool)
    outside[inside] = False
    assert outside.any() and not labels[outside].any()
