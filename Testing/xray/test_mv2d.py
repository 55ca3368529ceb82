"""The MV2D skeleton: 2D detector targets and decoding agree, 3D queries land where the geometry says, relevant-view
masks keep the right cells, and a few real training steps on rendered pt_201 scenes lower the loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from organdetr.dataset import CaseRecord
from organdetr.xray.camera import CameraStack, CArmGeometry
from organdetr.xray.mv2d import MV2D, MV2DConfig, MV2DLoss, predict_boxes
from organdetr.xray.queries import (
    IsocentreFrame,
    isocentre_depths,
    reference_points,
    relevant_view_mask,
    sine_encode_points,
    token_pixels,
)
from organdetr.xray.scenes import SceneConfig, make_scene, read_case
from organdetr.xray.view_detector import CenterNetConfig, ViewOutputs, decode, heatmap_targets
from xray_case import OPENKBP_CLASSES, HeadNeckCase

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_decoding_perfect_outputs_gives_back_the_boxes() -> None:
    boxes = torch.tensor([[[10.0, 12.0, 30.0, 20.0], [40.3, 5.5, 60.9, 50.0]], [[np.nan] * 4, [1.0, 2.0, 9.0, 63.0]]])
    stride, shape = 8, (8, 8)
    targets = heatmap_targets(boxes, shape, stride)
    log_sizes, offsets = torch.zeros(2, 2, 2, 64), torch.zeros(2, 2, 2, 64)  # [views, organs, 2, cells]
    for n in range(2):
        for k in range(2):
            if targets["mask"][n, k]:
                log_sizes[n, k, :, targets["index"][n, k]] = targets["log_size"][n, k]
                offsets[n, k, :, targets["index"][n, k]] = targets["offset"][n, k]
    logits = torch.logit(targets["heatmap"].clamp(1e-6, 1 - 1e-6))
    per_organ = (2, 2, 2, 8, 8)
    outputs = ViewOutputs(logits, log_sizes.view(per_organ), offsets.view(per_organ), torch.zeros(2, 3, 8, 8), stride)
    decoded = decode(outputs)
    present = targets["mask"]
    torch.testing.assert_close(decoded.boxes[present], boxes[present], rtol=0, atol=1e-4)
    assert bool((decoded.scores[present] > 0.99).all())
    assert targets["heatmap"][1, 0].max() == 0.0  # no box, no peak


def test_reference_points_and_relevant_views_follow_the_geometry(pt_201: HeadNeckCase) -> None:
    organ = pt_201.corners[6]  # mandible
    centre = torch.as_tensor(organ.mean(axis=0), dtype=torch.float32)
    isocenter = centre + torch.tensor([15.0, -20.0, 10.0])
    cameras = CArmGeometry(num_views=4, rows=64, columns=64, pixel_spacing_mm=10.0, isocenter=tuple(isocenter.tolist()))
    stack = CameraStack.from_cameras(cameras.cameras())
    pixels, depth = stack.project(centre.expand(4, 3))
    # A detection at the organ centre's pixel, at the organ centre's depth, lifts to the organ centre in every view.
    lifted = reference_points(stack, pixels[None], depth[None])[0]
    torch.testing.assert_close(lifted, centre.expand(4, 3), rtol=0, atol=1e-3)
    torch.testing.assert_close(isocentre_depths(stack, isocenter), torch.full((4,), 750.0), rtol=0, atol=1e-3)
    cells = token_pixels(64, 64, 8, torch.device("cpu"))
    mask = relevant_view_mask(
        stack, centre[None], torch.tensor([20.0]), torch.tensor([0]), torch.tensor([0]), cells, stride=8
    ).view(4, -1)
    for view in range(4):
        distance = (cells - pixels[view]).abs().amax(dim=-1)
        assert bool(mask[view, distance.argmin()])  # the cell over the organ centre
        far = distance > 20.0 * stack.intrinsics[view, 0, 0] / depth[view] + 8 + 1e-3
        far[0] &= view != 0  # the query's own detection (view 0, cell 0) is always allowed
        assert not bool(mask[view, far].any())  # nothing far away
    assert bool(mask[0, 0])


def test_isocentre_frame_and_point_codes() -> None:
    frame = IsocentreFrame(torch.tensor([10.0, -5.0, 300.0]), 200.0)
    boxes = torch.tensor([[0.0, 0.0, 250.0, 40.0, 20.0, 60.0]])
    torch.testing.assert_close(frame.world_boxes(frame.normalise_boxes(boxes)), boxes)
    torch.testing.assert_close(frame.normalise_points(frame.isocenter), torch.full((3,), 0.5))
    codes = sine_encode_points(torch.tensor([[0.5, 0.5, 0.5], [0.51, 0.5, 0.5], [0.5, 0.5, 0.6]]), 64)
    assert codes.shape == (3, 64) and bool((codes[:, 60:] == 0).all())
    assert float((codes[0] - codes[1]).norm()) > 0.1 and float((codes[0] - codes[2]).norm()) > 0.1


@pytest.fixture(scope="module")
def rendered_scenes(pt_201: HeadNeckCase) -> list:
    case = read_case(CaseRecord("pt_201", pt_201.ct_path, pt_201.label_path, ()), OPENKBP_CLASSES)
    config = SceneConfig(c_arm=CArmGeometry(num_views=4, rows=64, columns=64, pixel_spacing_mm=10.0))
    return [make_scene(case, config, index) for index in range(2)]


def test_a_few_training_steps_lower_the_loss(rendered_scenes: list) -> None:
    torch.manual_seed(0)
    config = MV2DConfig(detector=CenterNetConfig(stage_channels=(8, 16, 32), feature_channels=32), d_model=32)
    model, loss_function = MV2D(config).to(DEVICE), MV2DLoss(config).to(DEVICE)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images = torch.stack([scene.images for scene in rendered_scenes]).to(DEVICE)
    cameras = [scene.cameras for scene in rendered_scenes]
    isocenters = torch.as_tensor(np.stack([scene.isocenter for scene in rendered_scenes]), device=DEVICE)
    history = []
    for _ in range(16):
        outputs = model(images, cameras, isocenters)
        losses = loss_function(outputs, rendered_scenes)
        optimiser.zero_grad()
        losses["loss"].backward()
        optimiser.step()
        history.append(float(losses["loss"].detach()))
    assert all(np.isfinite(history))
    assert {"loss_class", "loss_bbox", "loss_giou", "loss_heatmap", "loss_size", "loss_class_aux0"} <= set(losses)
    assert outputs["pred_logits"].shape == (2, 4 * 7, 8) and outputs["pred_boxes"].shape == (2, 4 * 7, 6)
    assert np.mean(history[-3:]) < 0.8 * np.mean(history[:3]), history
    boxes, scores = predict_boxes(outputs, isocenters, config.frame_half_extent_mm)
    assert boxes.shape == (2, 7, 6) and scores.shape == (2, 7) and bool(torch.isfinite(boxes).all())
    # Boxes lie in the isocentre frame: within 200 mm of the isocentre on every axis.
    assert bool(((boxes[..., :3] - isocenters[:, None].float()).abs() <= 200.0).all())


def test_depth_and_attention_reach_the_2d_detector(rendered_scenes: list) -> None:
    """Gradients of the 3D losses flow into the detector's features (the queries are built from them)."""
    config = replace(MV2DConfig(detector=CenterNetConfig(stage_channels=(8, 16), feature_channels=16)), d_model=16)
    model, loss_function = MV2D(config), MV2DLoss(replace(config, weight_2d=0.0))
    scenes = rendered_scenes[:1]
    outputs = model(scenes[0].images[None], [scenes[0].cameras], torch.as_tensor(scenes[0].isocenter)[None])
    loss_function(outputs, scenes)["loss"].backward()
    assert float(model.detector.neck.weight.grad.abs().sum()) > 0
    assert float(model.depth_head[0].weight.grad.abs().sum()) > 0
