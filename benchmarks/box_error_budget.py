"""Where the boxes lose their IoU: their ranking against their error, and which corners err.

Usage: python benchmarks/box_error_budget.py --data dataset.json|pack.npz [--model M] [--split validation]
[--json OUT]

With the shipped inference path, on one split (validation by default):

1. Ranking: mAP / AP50 / AP75 / mAR of the refined and of the query boxes with the model's scores, with each box's
   true IoU as its score (the best any score could do: it puts every box above every worse one at every IoU
   threshold) and with one score for all. The gap between the first two is what better scores could still give; the
   rest only better boxes can.
2. Corners: per organ, for the detections whose query box overlaps a segmented component (those the refinement
   mixes), the mean absolute error of each box corner (lo/hi along network axes 0, 1, 2; network voxels) of the query
   box, of the component's box, of the refined box, and of the better of query and component at each corner (what a
   perfect per-case choice between the two would give).

Session 12 (2.6.0, validation): refined boxes mAP 0.203 with the model's scores, 0.273 with the true IoU, 0.189 with
one score; post-processing tried on top of these (a per-organ quality regression fitted on training cases, context
from other organs' corners, fused top-k query boxes) gave 0.186-0.207, none more than 0.004 above 0.203.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from organdetr.box_ops import boxes_from_label_map, center_size_to_corners, pairwise_iou
from organdetr.box_refinement import best_component
from organdetr.checkpoint import load_checkpoint
from organdetr.dataset import MIN_OBJECT_VOXELS
from organdetr.evaluate import image_detections
from organdetr.inference import run_detector, select_device
from organdetr.metrics import ImageDetections, compute_metrics
from organdetr.training_pack import load_training_data

CORNERS = ("lo0", "lo1", "lo2", "hi0", "hi1", "hi2")
SCORINGS = ("model", "true IoU", "constant")
ESTIMATES = ("query", "component", "refined", "better of query and component")


def rescored(images: list[ImageDetections], scoring: str) -> list[ImageDetections]:
    """``images`` with every prediction's score replaced by its true IoU or one constant (``model``: unchanged)."""
    if scoring == "model":
        return images
    result = []
    for image in images:
        scores = torch.ones_like(image.pred_scores)
        if scoring == "true IoU":
            for i, k in enumerate(image.pred_classes.tolist()):
                truth = image.gt_boxes[image.gt_classes == k]
                scores[i] = float(pairwise_iou(image.pred_boxes[i : i + 1], truth).max()) if len(truth) else 0.0
        result.append(replace(image, pred_scores=scores))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="dataset.json or training pack")
    parser.add_argument("--model", default=None, help="model folder or name (default: the shipped model)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    device = select_device(args.device)
    loaded = load_checkpoint(args.model, device)
    config = loaded.config
    if not config.model.segmentation_branch.enabled:
        raise SystemExit("box_error_budget: the model has no segmentation branch (nothing refines its boxes)")
    cases = load_training_data(args.data).preprocessed_cases(args.split, config.preprocess)

    boxes: dict[str, list[ImageDetections]] = {"refined": [], "query": []}
    errors: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    for case in cases:
        output = run_detector(loaded.model, case.volume(), device, config, top_k=1, segmentation=True)
        gt_classes, gt_boxes = boxes_from_label_map(case.label_map, len(config.class_names), MIN_OBJECT_VOXELS)
        refined = [organ.box for organ in output.organs]
        boxes["refined"].append(image_detections(case, output, refined, gt_classes, gt_boxes))
        boxes["query"].append(image_detections(case, output, output.query_boxes, gt_classes, gt_boxes))
        labels = output.segmentation.numpy()
        scale = torch.tensor(labels.shape, dtype=torch.float32).repeat(2)  # normalised corners -> voxels
        for organ, query in zip(output.organs, output.query_boxes, strict=True):
            truth = gt_boxes[gt_classes == organ.class_index]
            if not case.annotated[organ.class_index] or not len(truth):
                continue
            _, component = best_component(replace(organ, box=query), labels, config.refinement)
            if component is None:
                continue
            corners = center_size_to_corners(torch.stack([query, component, organ.box, truth[0]]).float()) * scale
            query_error, component_error, refined_error = (corners[:3] - corners[3]).abs()
            estimates = (query_error, component_error, refined_error, query_error.minimum(component_error))
            for name, error in zip(ESTIMATES, estimates, strict=True):
                errors[config.class_names[organ.class_index]][name].append(error)

    figures: dict = {"ranking": {}, "corner_errors_voxels": {}}
    print(f"{len(cases)} {args.split} cases, {config.name} {config.version}")
    print(f"{'boxes':8s} {'scores':9s} {'mAP':>6s} {'AP50':>6s} {'AP75':>6s} {'mAR':>6s}")
    for kind, images in boxes.items():
        for scoring in SCORINGS:
            metrics = compute_metrics(rescored(images, scoring), config.class_names).to_dict()
            row = {key: metrics[key] for key in ("mAP", "AP50", "AP75", "mAR")}
            figures["ranking"][f"{kind}, {scoring}"] = row
            print(f"{kind:8s} {scoring:9s} " + " ".join(f"{value:6.3f}" for value in row.values()))
    print(f"\nmean absolute corner error (network voxels), {' '.join(CORNERS)}")
    for organ, by_estimate in errors.items():
        figures["corner_errors_voxels"][organ] = {}
        for name, values in by_estimate.items():
            mean = torch.stack(values).mean(dim=0).tolist()
            figures["corner_errors_voxels"][organ][name] = dict(zip(CORNERS, mean, strict=True))
            print(f"{organ:13s} {name:30s} n={len(values):3d} " + " ".join(f"{v:5.2f}" for v in mean))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
