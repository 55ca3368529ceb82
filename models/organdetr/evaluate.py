"""``organdetr evaluate``: COCO-style 3D metrics of a detector on a split of an MSD-style dataset.json.

The same :func:`evaluate_cases` serves the command and the validation inside ``organdetr train``; it runs the
shared inference path (:func:`organdetr.inference.run_detector`) on each preprocessed case and compares the boxes
with those of the case's label map on the network grid. Boxes are converted to millimetres with the physical size of
a network voxel, so IoU is unchanged and the centre / size errors are in mm.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic_file import atomic_write_text, check_writable
from .config import DetectorConfig

# Names of the maximum-intensity projections along each network axis, for the LPS network orientation.
PROJECTION_NAMES = {
    ("LPS", 0): "sagittal (along right-left)",
    ("LPS", 1): "coronal (along anterior-posterior)",
    ("LPS", 2): "axial (along head-foot)",
}
QUICKLOOK_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:cyan", "tab:olive")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="trained model folder or name (default: the shipped model)")
    parser.add_argument(
        "--data", required=True, type=Path, help="MSD-style dataset.json, or a training pack (organdetr pack)"
    )
    parser.add_argument("--split", default="validation", help="split to evaluate (default validation)")
    parser.add_argument("--output", required=True, type=Path, help="metrics JSON file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quicklook", type=Path, default=None, help="folder for PNGs of predicted vs true boxes")
    parser.add_argument("--cache-dir", type=Path, default=None, help="preprocessed-volume cache (as for train)")


def boxes_to_mm(boxes: torch.Tensor, shape: Sequence[int], spacing_mm: Sequence[float]) -> torch.Tensor:
    """Normalised center-size boxes on the network grid -> center-size in mm along the network axes."""
    extent = torch.tensor([n * s for n, s in zip(shape, spacing_mm, strict=True)], dtype=torch.float32)
    return boxes.float() * torch.cat([extent, extent])


def image_detections(case, output, boxes: list[torch.Tensor], gt_classes: torch.Tensor, gt_boxes: torch.Tensor):
    """One case's :class:`~organdetr.metrics.ImageDetections` in mm, with ``boxes`` as the predicted boxes."""
    from .metrics import ImageDetections

    shape = case.label_map.shape
    return ImageDetections(
        pred_classes=torch.tensor([organ.class_index for organ in output.organs], dtype=torch.long),
        pred_scores=torch.tensor([organ.score for organ in output.organs], dtype=torch.float32),
        pred_boxes=boxes_to_mm(torch.stack(boxes), shape, case.network_spacing_mm),
        gt_classes=gt_classes,
        gt_boxes=boxes_to_mm(gt_boxes, shape, case.network_spacing_mm),
        annotated=case.annotated,
        presence=torch.tensor(output.presence, dtype=torch.float32),
    )


def _case_organs(image, class_names: Sequence[str]) -> dict[str, dict]:
    """Per annotated organ of one case: presence, score, whether it is in the case and the IoU of its box."""
    from .box_ops import pairwise_iou

    organs = {}
    for k in image.annotated.nonzero()[:, 0].tolist():
        truth = image.gt_boxes[image.gt_classes == k]
        predicted = image.pred_boxes[image.pred_classes == k]
        organs[class_names[k]] = {
            "present": bool(len(truth)),
            "presence": float(image.presence[k]),
            "score": float(image.pred_scores[image.pred_classes == k][0]),
            "iou": float(pairwise_iou(predicted[:1], truth[:1])[0, 0]) if len(truth) else None,
        }
    return organs


def evaluate_cases(
    model: nn.Module,
    cases: Sequence,
    config: DetectorConfig,
    device: torch.device,
    progress: bool = False,
    quicklook_dir: Path | None = None,
):
    """Detect on every :class:`~organdetr.dataset.PreprocessedCase` (windows, refinement and presence threshold of
    ``config``) and return its :class:`DetectionMetrics`. With a segmentation branch, the metrics also hold those of
    the query boxes alone (``query_boxes``) and the branch's Dice per organ."""
    from tqdm import tqdm

    from .box_ops import boxes_from_label_map
    from .dataset import MIN_OBJECT_VOXELS
    from .inference import run_detector
    from .metrics import compute_metrics, segmentation_dice

    class_names = config.class_names
    branch = config.model.segmentation_branch.enabled
    images, query_images, dice, per_case = [], [], [], []
    for case in tqdm(cases, desc="evaluate", unit="case", disable=not progress, leave=False):
        output = run_detector(model, case.volume(), device, config, top_k=1, segmentation=branch)
        gt_classes, gt_boxes = boxes_from_label_map(case.label_map, len(class_names), min_voxels=MIN_OBJECT_VOXELS)

        image = image_detections(case, output, [organ.box for organ in output.organs], gt_classes, gt_boxes)
        images.append(image)
        per_case.append({"case": case.name, "organs": _case_organs(image, class_names)})
        if branch:
            query_images.append(image_detections(case, output, output.query_boxes, gt_classes, gt_boxes))
            dice.append(segmentation_dice(output.segmentation, case.label_map, case.annotated))
        if quicklook_dir is not None:
            save_quicklook(quicklook_dir / f"{case.name}.png", case, image, class_names, config.preprocess.orientation)
    metrics = compute_metrics(images, class_names, presence_threshold=config.presence.threshold)
    metrics.per_case = per_case
    if branch:
        metrics.query_boxes = compute_metrics(query_images, class_names, presence_threshold=config.presence.threshold)
        metrics.segmentation_dice = {
            name: float(np.nanmean(values)) if not np.isnan(values).all() else None
            for name, values in zip(class_names, np.array(dice, dtype=np.float64).T, strict=True)
        }
    return metrics


def save_quicklook(path: Path, case, image, class_names: Sequence[str], orientation: str) -> None:
    """Three maximum-intensity projections with true (solid) and predicted (dashed) boxes of annotated organs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    volume = case.image[0].float().numpy()
    spacing = case.network_spacing_mm
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.5))
    for projected, ax in enumerate(axes):
        rows, cols = [a for a in range(3) if a != projected]
        ax.imshow(
            volume.max(axis=projected),
            cmap="gray",
            origin="upper",
            aspect="equal",
            extent=(0, volume.shape[cols] * spacing[cols], volume.shape[rows] * spacing[rows], 0),
        )
        ax.set_title(f"{PROJECTION_NAMES.get((orientation, projected), f'along network axis {projected}')} (mm)")
        for boxes, classes, style in (
            (image.gt_boxes, image.gt_classes, "-"),
            (image.pred_boxes, image.pred_classes, "--"),
        ):
            for box, k in zip(boxes, classes.tolist(), strict=True):
                if not bool(case.annotated[k]):
                    continue
                centre, size = box[:3].tolist(), box[3:].tolist()
                corner = (centre[cols] - size[cols] / 2, centre[rows] - size[rows] / 2)
                colour = QUICKLOOK_COLOURS[k % len(QUICKLOOK_COLOURS)]
                ax.add_patch(Rectangle(corner, size[cols], size[rows], fill=False, ls=style, lw=1.2, ec=colour))
    handles = [
        plt.Line2D([], [], color=QUICKLOOK_COLOURS[k % len(QUICKLOOK_COLOURS)], label=name)
        for k, name in enumerate(class_names)
    ]
    handles += [
        plt.Line2D([], [], color="k", ls="-", label="true"),
        plt.Line2D([], [], color="k", ls="--", label="predicted"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize="small")
    figure.suptitle(case.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def format_table(metrics) -> str:
    """A readable per-organ table and the summary line."""

    def cell(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = (
        f"{'organ':<16}{'n':>5}{'AP':>7}{'AP50':>7}{'AP75':>7}{'AR':>7}{'IoU':>7}{'centre mm':>11}{'size mm':>9}"
        f"{'rho(score,IoU)':>16}"
    )
    lines = [header, "-" * len(header)]
    for c in metrics.per_class:
        lines.append(
            f"{c.name:<16}{c.num_gt:>5}{cell(c.AP):>7}{cell(c.AP50):>7}{cell(c.AP75):>7}{cell(c.AR):>7}"
            f"{cell(c.mean_iou, 2):>7}{cell(c.centre_error_mm, 1):>11}{cell(c.size_error_mm, 1):>9}"
            f"{cell(c.score_iou_spearman, 2):>16}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"mAP {cell(metrics.mAP)}  AP50 {cell(metrics.AP50)}  AP75 {cell(metrics.AP75)}  mAR {cell(metrics.mAR)}  "
        f"mAP_nndet {cell(metrics.mAP_nndet)}  rho(score, IoU) {cell(metrics.score_iou_spearman, 2)}  "
        f"(fractions, as in the model card; {metrics.num_images} images; '-' = no ground truth)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .inference import select_device
    from .training_pack import load_split

    args.output.parent.mkdir(parents=True, exist_ok=True)
    check_writable(args.output, args.overwrite)
    device = select_device(args.device)
    loaded = load_checkpoint(args.model, device)
    description = load_split(args.data, args.split)
    description.check_class_names(loaded.config.class_names)
    cases = description.preprocessed_cases(args.split, loaded.config.preprocess, args.cache_dir)
    metrics = evaluate_cases(loaded.model, cases, loaded.config, device, progress=True, quicklook_dir=args.quicklook)
    result = {
        **metrics.to_dict(),
        "model": str(loaded.directory),
        "weights_sha256": loaded.weights_sha256,
        "data": str(description.path),
        "split": args.split,
        "device": str(device),
    }
    atomic_write_text(args.output, json.dumps(result, indent=2))
    print(format_table(metrics))
    print(f"wrote {args.output}")
    return 0
