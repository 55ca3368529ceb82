"""Running a trained MV2D model on views: one 3D box per organ (world mm) and each view's 2D detections.

Views from another detector than the model was trained for are resampled first (:func:`fit_views_to_model`): the
network learned organ sizes in pixels, so each view is zoomed until a pixel covers at the isocentre what it did in
training, and its intrinsics are scaled to match, which leaves the geometry exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from .camera import Camera
from .mv2d import MV2D, predict_boxes
from .training_config import XrayTrainingConfig
from .views_file import ViewSet

# Zooms this close to 1 leave the views alone (the distance jitter of training scenes is +-5 %).
_ZOOM_TOLERANCE = 0.1


@dataclass(eq=False)
class XrayPrediction:
    """One scene's result: 3D boxes ``[K, 6]`` (centre-size, world mm) and scores ``[K]``; the 2D detector's best
    box per view and organ ``[V, K, 4]`` (pixels of the views as given) and its scores ``[V, K]``."""

    boxes3d: np.ndarray
    scores: np.ndarray
    boxes2d: np.ndarray
    scores2d: np.ndarray


@torch.no_grad()
def predict(
    model: MV2D, images: torch.Tensor, cameras: Sequence[Sequence[Camera]], isocenters: torch.Tensor
) -> list[XrayPrediction]:
    """Predictions for a batch of scenes with the same number of views (``images`` ``[B, V, rows, columns]``)."""
    device = next(model.parameters()).device
    outputs = model(images.to(device), cameras, isocenters.to(device))
    boxes, scores = predict_boxes(outputs, isocenters.to(device), model.config.frame_half_extent_mm)
    detections = outputs["view_detections"]
    batch, views = images.shape[:2]
    boxes2d = detections.boxes.reshape(batch, views, -1, 4).cpu().numpy()
    scores2d = detections.scores.reshape(batch, views, -1).cpu().numpy()
    return [
        XrayPrediction(boxes[b].cpu().numpy().astype(np.float64), scores[b].cpu().numpy(), boxes2d[b], scores2d[b])
        for b in range(batch)
    ]


def _pixel_mm_at_isocentre(camera: Camera, isocenter: np.ndarray) -> float:
    depth = float(camera.rotation[2] @ isocenter + camera.translation[2])
    return depth / float(np.sqrt(camera.intrinsics[0, 0] * camera.intrinsics[1, 1]))


def fit_views_to_model(views: ViewSet, config: XrayTrainingConfig) -> tuple[list[Camera], torch.Tensor, float]:
    """Cameras and images ``[V, rows, columns]`` zoomed to the pixel size at the isocentre the model was trained
    with, and the zoom (new pixels per given pixel; 1 when none was needed)."""
    c_arm = config.scenes.c_arm
    trained_mm = c_arm.source_to_isocenter_mm * c_arm.pixel_spacing_mm / c_arm.source_to_detector_mm
    given_mm = float(np.mean([_pixel_mm_at_isocentre(camera, views.isocenter) for camera in views.cameras]))
    zoom = given_mm / trained_mm
    if abs(zoom - 1.0) <= _ZOOM_TOLERANCE:
        return views.cameras, views.images, 1.0
    first = views.cameras[0]
    rows, columns = max(1, round(first.rows * zoom)), max(1, round(first.columns * zoom))
    scale_u, scale_v = columns / first.columns, rows / first.rows
    # Pixel centres at integers: u' = (u + 1/2) s - 1/2.
    pixels = np.array([[scale_u, 0.0, 0.5 * scale_u - 0.5], [0.0, scale_v, 0.5 * scale_v - 0.5], [0.0, 0.0, 1.0]])
    cameras = [
        replace(camera, intrinsics=pixels @ camera.intrinsics, rows=rows, columns=columns) for camera in views.cameras
    ]
    mode = "area" if zoom < 1 else "bilinear"
    images = F.interpolate(views.images[:, None], size=(rows, columns), mode=mode)[:, 0]
    return cameras, images, math.sqrt(scale_u * scale_v)


def predict_views(model: MV2D, config: XrayTrainingConfig, views: ViewSet) -> XrayPrediction:
    """The prediction for one views folder, 2D boxes given back in the folder's own pixels."""
    cameras, images, zoom = fit_views_to_model(views, config)
    isocenter = torch.as_tensor(views.isocenter, dtype=torch.float32)[None]
    prediction = predict(model, images[None].float(), [cameras], isocenter)[0]
    if zoom != 1.0:
        scale = np.array([cameras[0].columns / views.cameras[0].columns, cameras[0].rows / views.cameras[0].rows] * 2)
        prediction.boxes2d = (prediction.boxes2d + 0.5) / scale - 0.5
    return prediction
