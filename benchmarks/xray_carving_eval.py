"""Baselines of X-ray 3D localisation on OpenKBP: carving from TRUE 2D silhouettes, and the mean-box prior.

For every validation case, one scene per view setting (:mod:`organdetr.xray.scenes`: isocentre shifted by up to
``--shift`` mm per axis from the scan centre, random start angle, +-5 % distances): each organ's true silhouette box
in every view is carved into a 3D box (:mod:`organdetr.xray.carving`, region = the field every view sees) and
scored against the organ's full label box with the project's COCO-style 3D metrics
(:func:`organdetr.metrics.compute_metrics`: AP50, mean IoU; organs not annotated in a case are ignored). Two views
are AP + lateral (a 90 deg arc: two opposed views see nearly alike); 3, 5 and 10 views span the full circle.

The mean-box prior (:mod:`organdetr.xray.prior`: mean organ box relative to the isocentre over one scene of every
training case) is scored on the same scenes, and once more on unshifted scenes (isocentre = scan centre) to show
how much of its error the shift makes. No pixel is rendered: the figures depend on geometry alone.

    python benchmarks/xray_carving_eval.py --data ../shared/data/openkbp/dataset.json --output xray_baselines.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

VIEW_SETTINGS = ((10, 360.0), (5, 360.0), (3, 360.0), (2, 90.0))


def score(name: str, predictions: list[np.ndarray], scenes: list, class_names) -> dict:
    """One method's figures (:func:`organdetr.xray.scoring.score_3d`), printed as one line."""
    from organdetr.xray.evaluation import summary_line
    from organdetr.xray.scoring import score_3d

    figures = {"method": name, **score_3d(predictions, scenes, class_names)}
    print(summary_line(name, figures))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="OpenKBP dataset.json (training + validation)")
    parser.add_argument("--shift", type=float, default=30.0, help="isocentre shift range, mm per axis (default 30)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()

    from organdetr.atomic_file import atomic_write_text
    from organdetr.dataset import load_dataset_json
    from organdetr.xray.camera import CArmGeometry
    from organdetr.xray.carving import carve_boxes, field_of_view_cube
    from organdetr.xray.prior import MeanBoxPrior
    from organdetr.xray.scenes import SceneConfig, make_scene, read_case

    description = load_dataset_json(args.data, ("training", "validation"))
    names = description.class_names
    shifted = SceneConfig(render=False, isocenter_shift_mm=args.shift)
    centred = replace(shifted, isocenter_shift_mm=0.0)
    training_scenes = [make_scene(read_case(r, names), shifted) for r in description.splits["training"]]
    prior = MeanBoxPrior.fit(names, training_scenes)
    validation = [read_case(r, names) for r in description.splits["validation"]]
    print(
        f"{len(training_scenes)} training scenes (prior), {len(validation)} validation cases, shift +-{args.shift} mm"
    )

    figures = []
    for views, arc in VIEW_SETTINGS:
        config = replace(shifted, c_arm=CArmGeometry(num_views=views, arc_deg=arc))
        scenes = [make_scene(case, config) for case in validation]
        carved = []
        for scene in scenes:
            low, high = field_of_view_cube(scene.cameras, scene.isocenter)
            carved.append(carve_boxes(scene.cameras, scene.boxes2d, low, high))
        figures.append(score(f"carving, true silhouettes, {views} views", carved, scenes, names))
    for label, config in (("shifted", shifted), ("centred", centred)):
        scenes = [make_scene(case, config) for case in validation]
        predictions = [prior.predict(scene.isocenter) for scene in scenes]
        figures.append(score(f"mean-box prior, {label} isocentres", predictions, scenes, names))
    if args.output is not None:
        atomic_write_text(args.output, json.dumps({"shift_mm": args.shift, "results": figures}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
