"""Growing a trained network for a fine-tuning run (``organdetr train --init-weights ... --fine-channels N``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from openkbp_dataset import write_dataset_json
from organdetr.checkpoint import LoadedDetector
from organdetr.config import DetectorConfig, SegmentationBranchConfig
from organdetr.dataset import load_dataset_json
from organdetr.errors import UserInputError
from organdetr.fine_tuning import extended_model
from organdetr.organ_detr import build_model
from organdetr.run_config import ConfigChoices, new_run_config

FINE_BRANCH = SegmentationBranchConfig(enabled=True, channels=(16, 8), output_stride=1)


@pytest.fixture
def trained(tiny_config: DetectorConfig) -> torch.nn.Module:
    """The tiny network with a fine stage whose every weight is non-zero (a fresh fine classifier is zero, which
    would hide a wrongly grown stage)."""
    torch.manual_seed(0)
    model = build_model(replace(tiny_config.model, segmentation_branch=FINE_BRANCH)).eval()
    with torch.no_grad():
        model.seg_branch.fine_classifier.weight.normal_(std=0.5)
        model.seg_branch.fine_classifier.bias.normal_(std=0.5)
    return model


def _outputs(model: torch.nn.Module, images: torch.Tensor) -> dict:
    with torch.no_grad():
        return model(images, return_segmentation=True)


def test_a_wider_fine_stage_starts_out_computing_what_the_trained_one_did(trained) -> None:
    wide_config = replace(trained.config, segmentation_branch=replace(FINE_BRANCH, channels=(16, 24)))
    wide = extended_model(trained, wide_config).eval()
    assert wide.seg_branch.fine_classifier.weight.shape[1] == 24
    images = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    before, after = _outputs(trained, images), _outputs(wide, images)
    for name in ("pred_logits", "pred_boxes", "seg_full_logits"):
        assert torch.equal(before[name], after[name]), name
    for old, new in zip(before["seg_fine_logits"], after["seg_fine_logits"], strict=True):
        assert old.region == new.region
        torch.testing.assert_close(new.logits, old.logits, rtol=0, atol=1e-5)

    # The new channels compute something (fresh weights in), and only the zero weights out keep it from the logits.
    second = wide.seg_branch.fine_units[1][0].weight
    assert second[8:].abs().sum() > 0 and torch.equal(second[:8, 8:], torch.zeros_like(second[:8, 8:]))
    classifier = wide.seg_branch.fine_classifier.weight
    assert torch.equal(classifier[:, 8:], torch.zeros_like(classifier[:, 8:]))
    wide.train()
    fine = wide(images)["seg_fine_logits"]
    sum(f.logits.square().mean() for f in fine if f is not None).backward()
    assert classifier.grad[:, 8:].abs().sum() > 0  # so they start learning at the first step


@pytest.mark.parametrize("grown", ["stride-2 decoder", "transformer decoder"])
def test_only_the_fine_stage_may_grow(trained, grown) -> None:
    """Growing other layers would not preserve the function: the stride-2 decoder's channels come before the image in
    the fine stage's input, and the transformer's LayerNorms would see other statistics. Refused."""
    config = trained.config
    if grown == "stride-2 decoder":
        config = replace(config, segmentation_branch=replace(FINE_BRANCH, channels=(24, 8)))
    else:
        config = replace(config, decoder=replace(config.decoder, d_model=64))
    with pytest.raises(UserInputError, match="does not match"):
        extended_model(trained, config)


def test_fine_channels_choice_widens_a_trained_stage_and_sizes_a_new_one(tmp_path, data_dir, tiny_config, trained):
    description = load_dataset_json(write_dataset_json(tmp_path, data_dir))
    initial = LoadedDetector(trained, replace(tiny_config, model=trained.config), "0" * 64, tmp_path)
    config = new_run_config(ConfigChoices(fine_channels=12), "run", description, initial)
    assert config.model.segmentation_branch.channels == (16, 12)
    with pytest.raises(UserInputError, match="may only widen a trained fine stage: it has 8, got 4"):
        new_run_config(ConfigChoices(fine_channels=4), "run", description, initial)
    # A fine stage that the run adds (or a new network) has no trained channels to keep: any size.
    new = new_run_config(ConfigChoices(segmentation_stride=1, fine_channels=4), "run", description)
    assert new.model.segmentation_branch.channels[1] == 4
    with pytest.raises(UserInputError, match="at least 1"):
        new_run_config(ConfigChoices(segmentation_stride=1, fine_channels=0), "run", description)
    with pytest.raises(UserInputError, match="needs the segmentation branch's fine stage"):
        new_run_config(ConfigChoices(fine_channels=12), "run", description)
