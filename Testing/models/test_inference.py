"""The shared inference path on a real CT with the real (untrained) network, and device selection."""

from __future__ import annotations

import pytest
import torch
from organdetr.config import DetectorConfig
from organdetr.errors import UserInputError
from organdetr.inference import run_detector, segmentation_supported_presence, select_device
from organdetr.organ_detr import build_model


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
    labels = torch.zeros(4, 5, 6, dtype=torch.long)
    labels.view(-1)[:10] = 1  # organ 1: 10 voxels, half of what vouches fully
    labels.view(-1)[10:40] = 3  # organ 3: 30 voxels; organs 2 and 4: none
    vouched = segmentation_supported_presence([0.8, 0.9, 0.7, 0.6], labels, min_voxels=[20, 20, 20, 0])
    assert vouched == pytest.approx([0.4, 0.0, 0.7, 0.6])  # organ 4 is left to the head


def test_segmentation_branch_vouches_for_presence(tiny_config, head_neck_volume) -> None:
    """With ``min_segmented_voxels`` each organ's presence is the head's, scaled by its share of the segmentation."""
    volume, _ = head_neck_volume
    tiny_config.model.segmentation_branch.enabled = True
    tiny_config.model.presence_head = True
    torch.manual_seed(0)
    model = build_model(tiny_config.model)
    head_alone = run_detector(model, volume, torch.device("cpu"), tiny_config, segmentation=True)
    counts = torch.bincount(head_alone.segmentation.flatten(), minlength=tiny_config.model.num_classes + 1)[1:]
    min_voxels = int(counts.max()) + 1  # no organ fully vouched for
    names = tiny_config.class_names
    tiny_config.presence.min_segmented_voxels = {name: min_voxels for name in names[:-1]}  # the last: head alone
    vouched = run_detector(model, volume, torch.device("cpu"), tiny_config)
    expected = [p * int(n) / min_voxels for p, n in zip(head_alone.presence[:-1], counts[:-1], strict=True)]
    assert vouched.presence == pytest.approx([*expected, head_alone.presence[-1]])
    assert vouched.presence != pytest.approx(head_alone.presence)


def test_vouching_organs_must_be_the_models(tiny_config) -> None:
    data = tiny_config.to_dict()
    data["presence"]["min_segmented_voxels"] = {"Liver": 10}
    with pytest.raises(ValueError, match=r"organs the model does not have: \['Liver'\]"):
        DetectorConfig.from_dict(data)
