"""Evaluation of an MV2D model on validation scenes, beside the two baselines fed the same information.

Per view setting (10, 5 and 3 views over the full circle; 2 views = AP + lateral, a 90 deg arc) every validation
case gets one scene (scene 0: isocentre shifted, random start angle, jittered distances, the same draw for every
setting) at the detector the model was trained for. On those scenes:

* **MV2D**: the model's one box per organ (the best query), scored with its class probability;
* **carving from the PREDICTED 2D boxes**: the model's own 2D detector's best box per view and organ, kept when its
  score reaches :data:`CARVING_MIN_SCORE`, intersected (:mod:`organdetr.xray.carving`);
* **the mean-box prior** (:mod:`organdetr.xray.prior`), fitted on the training scenes;
* the **2D AP50** of the view detector against the true silhouettes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .carving import carve_boxes, field_of_view_cube
from .inference import XrayPrediction, predict
from .mv2d import MV2D
from .prior import MeanBoxPrior
from .scenes import Scene, SceneConfig
from .scoring import ap50_2d, score_3d
from .training_config import XrayTrainingConfig
from .training_data import stack_scenes

# (views, arc in degrees) of the view-count study.
VIEW_SETTINGS = ((10, 360.0), (5, 360.0), (3, 360.0), (2, 90.0))
# 2D detections below this score do not constrain carving (a wrong box in one view would empty the intersection).
CARVING_MIN_SCORE = 0.3


def view_setting(config: XrayTrainingConfig, views: int, arc_deg: float) -> SceneConfig:
    """The training scenes' settings with another number of views and arc."""
    return replace(config.scenes, c_arm=replace(config.scenes.c_arm, num_views=views, arc_deg=arc_deg))


def predict_scenes(model: MV2D, scenes: Sequence[Scene], batch_size: int = 8) -> list[XrayPrediction]:
    predictions = []
    for start in range(0, len(scenes), batch_size):
        batch = stack_scenes(scenes[start : start + batch_size])
        predictions.extend(predict(model, batch.images, batch.cameras, batch.isocenters))
    return predictions


def carve_predicted(prediction: XrayPrediction, scene: Scene) -> np.ndarray:
    """Carved boxes ``[K, 6]`` from the confident predicted 2D boxes."""
    boxes = np.where((prediction.scores2d >= CARVING_MIN_SCORE)[..., None], prediction.boxes2d, np.nan)
    low, high = field_of_view_cube(scene.cameras, scene.isocenter)
    return carve_boxes(scene.cameras, boxes, low, high)


def evaluate_scenes(
    model: MV2D, scenes: Sequence[Scene], class_names: Sequence[str], prior: MeanBoxPrior | None = None
) -> dict:
    """MV2D and 2D detector figures on ``scenes``; with a prior, also carving and the prior (the baselines)."""
    was_training = model.training
    model.eval()
    predictions = predict_scenes(model, scenes)
    model.train(was_training)
    figures = {
        "mv2d": score_3d([p.boxes3d for p in predictions], scenes, class_names, [p.scores for p in predictions]),
        "view_detector_2d": ap50_2d(
            [p.boxes2d for p in predictions], [p.scores2d for p in predictions], scenes, class_names
        ),
    }
    if prior is not None:
        carved = [carve_predicted(p, s) for p, s in zip(predictions, scenes, strict=True)]
        figures["carving_predicted_2d"] = score_3d(carved, scenes, class_names)
        figures["mean_box_prior"] = score_3d([prior.predict(s.isocenter) for s in scenes], scenes, class_names)
    return figures


def summary_line(name: str, figures: dict) -> str:
    """One printable line of a method's main figures."""
    error = figures["median_centre_error_mm"]
    return (
        f"{name:<30} AP50 {figures['AP50']:.3f}  mAP {figures['mAP']:.3f}  mean IoU {figures['mean_IoU']:.3f}  "
        f"median centre error {error if error is not None else float('nan'):5.1f} mm  "
        f"boxes {figures['organs_with_a_box']}"
    )
