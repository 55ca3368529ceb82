"""Refinement calibration: fit the ``weighted`` box rule of a model on TRAINING cases.

The training cases (the first ``--cases``, default all) go through the shared inference path with refinement off and
the segmentation on. For every annotated organ in a case, its query box, the component that refinement would trust
(``organdetr.box_refinement.best_component``) and its true box are taken as corners in network voxels. Per organ
and corner, ``fit_corner_mix`` gives the component's share of the least-squares mix and the mix's mean error; both
go into ``BoxRefinementConfig`` (``box_rule`` "weighted"). Organs with fewer than ``--min-organs`` components keep
their query boxes. Validation stays untouched for ``organdetr evaluate``.

    python benchmarks/refinement_calibration.py --model FOLDER --data ../shared/data/openkbp/dataset.json \\
        [--cases N] [--cache-dir DIR] [--output calibration.json] [--write-config]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from organdetr.box_ops import boxes_from_label_map, center_size_to_corners
from organdetr.box_refinement import best_component, fit_corner_mix


def collect(model_dir: str | None, data: Path, cases: int | None, cache_dir: Path | None):
    """Per organ the ``[N, 6]`` voxel corners of query boxes, trusted components and truths, and the model."""
    from organdetr.checkpoint import load_checkpoint
    from organdetr.dataset import MIN_OBJECT_VOXELS, CaseCache, load_dataset_json
    from organdetr.inference import run_detector

    loaded = load_checkpoint(model_dir)
    config = loaded.config
    if not config.model.segmentation_branch.enabled:
        raise SystemExit(f"{config.name} has no segmentation branch: nothing can refine its boxes")
    names = config.class_names
    unrefined = dataclasses.replace(config, refinement=dataclasses.replace(config.refinement, enabled=False))
    cache = CaseCache(names, config.preprocess, cache_dir)
    corners: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {name: [] for name in names}
    for record in load_dataset_json(data, ("training",)).splits["training"][:cases]:
        case = cache.get(record)
        output = run_detector(loaded.model, case.volume(), torch.device("cpu"), unrefined, top_k=1, segmentation=True)
        labels = output.segmentation.numpy()
        scale = torch.tensor(labels.shape, dtype=torch.float32).repeat(2)
        classes, truths = boxes_from_label_map(case.label_map, len(names), min_voxels=MIN_OBJECT_VOXELS)
        for k, truth in zip(classes.tolist(), truths, strict=True):
            _, component = best_component(output.organs[k], labels, config.refinement)
            if component is not None:
                boxes = torch.stack([output.organs[k].box.float(), component, truth])
                query, found, true = (center_size_to_corners(boxes) * scale).numpy()
                corners[names[k]].append((query, found, true))
        print(f"{record.name}: {sum(map(len, corners.values()))} organs with a component", flush=True)
    return corners, loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="dataset.json with a training split")
    parser.add_argument("--cases", type=int, default=None, help="training cases (the first N; default all)")
    parser.add_argument("--min-organs", type=int, default=10, help="fewest components to fit an organ's mix")
    parser.add_argument("--cache-dir", type=Path, default=None, help="preprocessed-volume cache (as for train)")
    parser.add_argument("--output", type=Path, default=None, help="JSON with the fitted mix per organ")
    parser.add_argument(
        "--write-config", action="store_true", help="write the fitted rule into the model folder's config.json"
    )
    args = parser.parse_args()

    from organdetr.atomic_file import atomic_write_text
    from organdetr.checkpoint import rewrite_config

    corners, loaded = collect(args.model, args.data, args.cases, args.cache_dir)
    weights, biases = {}, {}
    for name, rows in corners.items():
        if len(rows) < args.min_organs:
            print(f"{name}: {len(rows)} components, fewer than {args.min_organs}: keeps its query boxes")
            continue
        query, component, truth = (np.stack(column) for column in zip(*rows, strict=True))
        weight, bias = fit_corner_mix(query, component, truth)
        weights[name] = tuple(round(float(w), 3) for w in weight)
        biases[name] = tuple(round(float(b), 3) for b in bias)
        print(f"{name}: {len(rows)} components; component share {weights[name]}; bias (voxels) {biases[name]}")
    if args.output is not None:
        summary = {"cases": args.cases or "all", "component_weights": weights, "corner_bias_voxels": biases}
        atomic_write_text(args.output, json.dumps(summary, indent=1))
    if args.write_config:
        refinement = dataclasses.replace(
            loaded.config.refinement,
            enabled=True,
            box_rule="weighted",
            component_weights=weights,
            corner_bias_voxels=biases,
        )
        print(f"wrote {rewrite_config(loaded, refinement=refinement)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
