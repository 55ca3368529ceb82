"""Presence calibration: choose a model's segmentation-vouching rule and threshold on cuts of TRAINING cases.

The same scans as ``benchmarks/presence_checks.py`` (uncut, cut below the head, cut above the larynx;
``Testing/presence_cuts.py``), made from the first ``--cases`` training cases, go through the shared inference path
with every organ's segmented voxels counted. The rule (``PresenceConfig``): organ k's presence is the head's
probability times ``min(1, its voxels / N_k)``, with ``N_k = f_k x`` the median voxel count of organ k in the
training label maps (network grid), so that a big organ needs more voxels than a small one. Chosen: one ``f_k`` per
organ from ``--fractions`` (0: the head alone decides) and one shared threshold, giving the fewest absent organs
reported while keeping at least ``--keep`` of the present ones; ties go to fewer present organs missed, then to larger
fractions (vouching wherever it costs nothing on these scans). Validation stays untouched for
``presence_checks.py``.

    python benchmarks/presence_calibration.py --model FOLDER --data ../shared/data/openkbp/dataset.json \
        --cases 40 --output calibration.json [--write-config]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
import torch
from organdetr.inference import segmentation_supported_presence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from presence_cuts import CUTS, cut_case, presence_truth

FRACTIONS = (0.0, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Observation:
    """One organ in one scan: the truth, the head's probability and the organ's voxels in the segmentation."""

    case: str
    scan: str
    organ: str
    present: bool
    head: float
    voxels: float


@dataclass(frozen=True)
class Rule:
    """Per organ its fraction of the median volume (0: not vouched), the threshold, and what they give."""

    fractions: dict[str, float]
    threshold: float
    absent_reported: int
    present_missed: int


def vouched(observation: Observation, needed: int, threshold: float) -> bool:
    """Whether the organ is judged present under the inference path's rule with ``needed`` voxels (0: head alone)."""
    return segmentation_supported_presence([observation.head], [observation.voxels], [needed])[0] >= threshold


def choose_rule(
    observations: list[Observation],
    median_voxels: dict[str, float],
    fractions: tuple[float, ...] = FRACTIONS,
    thresholds: tuple[float, ...] = THRESHOLDS,
    keep: float = 0.975,
) -> Rule:
    """The rule of the module docstring, by exhaustive search (organs x fractions is small)."""
    organs = sorted({o.organ for o in observations})
    budget = math.floor(sum(o.present for o in observations) * (1.0 - keep) + 1e-9)
    best: tuple[tuple, Rule] | None = None
    for threshold in thresholds:
        # Per organ and fraction: (absent reported, present missed).
        table = {
            organ: [
                (
                    sum(vouched(o, round(f * median_voxels[organ]), threshold) for o in group if not o.present),
                    sum(not vouched(o, round(f * median_voxels[organ]), threshold) for o in group if o.present),
                )
                for f in fractions
            ]
            for organ in organs
            for group in [[o for o in observations if o.organ == organ]]
        }
        for choice in itertools.product(range(len(fractions)), repeat=len(organs)):
            absent = sum(table[organ][i][0] for organ, i in zip(organs, choice, strict=True))
            missed = sum(table[organ][i][1] for organ, i in zip(organs, choice, strict=True))
            if missed > budget:
                continue
            key = (absent, missed, -sum(choice))
            if best is None or key < best[0]:
                rule = Rule({o: fractions[i] for o, i in zip(organs, choice, strict=True)}, threshold, absent, missed)
                best = (key, rule)
    if best is None:
        raise SystemExit(f"no rule keeps {keep:.1%} of the present organs")
    return best[1]


def collect(model_dir: str | None, data: Path, cases: int) -> tuple[list[Observation], dict[str, float], object]:
    """Observations on the cut training scans and the organs' median voxel counts on the network grid."""
    from organdetr.checkpoint import load_checkpoint
    from organdetr.dataset import load_dataset_json, preprocess_case
    from organdetr.inference import run_detector
    from organdetr.preprocess import preprocess_image

    loaded = load_checkpoint(model_dir)
    config = loaded.config
    if not config.model.segmentation_branch.enabled:
        raise SystemExit(f"{config.name} has no segmentation branch: nothing can vouch for presence")
    names = config.class_names
    counting = dataclasses.replace(
        config, presence=dataclasses.replace(config.presence, min_segmented_voxels={n: 1 for n in names})
    )
    records = load_dataset_json(data, ("training",)).splits["training"]
    volumes: dict[str, list[int]] = {n: [] for n in names}
    for record in records:
        label_map = preprocess_case(record, names, config.preprocess).label_map
        counts = torch.bincount(label_map.flatten(), minlength=len(names) + 1)[1:].tolist()
        for name, count in zip(names, counts, strict=True):
            if name in record.annotated and count > 0:
                volumes[name].append(count)
    median_voxels = {n: float(statistics.median(v)) for n, v in volumes.items() if v}
    observations = []
    for record in records[:cases]:
        image, label = sitk.ReadImage(str(record.image)), sitk.ReadImage(str(record.label))
        for cut in CUTS:
            scan = cut_case(image, label, cut, names)
            if scan is None:
                continue
            volume = preprocess_image(scan[0], config.preprocess)
            output = run_detector(loaded.model, volume, torch.device("cpu"), counting, top_k=1)
            for organ, truth in presence_truth(label, scan[1], record.annotated, names).items():
                if truth is not None:
                    k = names.index(organ)
                    observations.append(
                        Observation(record.name, cut, organ, truth, output.head_presence[k], output.segmented_voxels[k])
                    )
        print(f"{record.name}: {len(observations)} observations", flush=True)
    return observations, median_voxels, loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="dataset.json with a training split")
    parser.add_argument("--cases", type=int, default=40, help="training cases to cut (the first N)")
    parser.add_argument("--keep", type=float, default=0.975, help="share of present organs to keep")
    parser.add_argument("--output", type=Path, default=None, help="JSON with the observations and the rule")
    parser.add_argument(
        "--write-config", action="store_true", help="write the chosen rule into the model folder's config.json"
    )
    args = parser.parse_args()

    from organdetr.atomic_file import atomic_write_text
    from organdetr.checkpoint import rewrite_config

    observations, median_voxels, loaded = collect(args.model, args.data, args.cases)
    rule = choose_rule(observations, median_voxels, keep=args.keep)
    min_voxels = {o: round(f * median_voxels[o]) for o, f in rule.fractions.items() if f > 0}
    absent_total = sum(not o.present for o in observations)
    present_total = len(observations) - absent_total
    print(
        f"threshold {rule.threshold}: absent reported {rule.absent_reported}/{absent_total}, present reported "
        f"{present_total - rule.present_missed}/{present_total}; fractions {rule.fractions}; "
        f"min_segmented_voxels {min_voxels}"
    )
    if args.output is not None:
        summary = {
            "rule": dataclasses.asdict(rule),
            "median_voxels": median_voxels,
            "min_segmented_voxels": min_voxels,
            "observations": [dataclasses.asdict(o) for o in observations],
        }
        atomic_write_text(args.output, json.dumps(summary, indent=1))
    if args.write_config:
        presence = dataclasses.replace(
            loaded.config.presence, threshold=rule.threshold, min_segmented_voxels=min_voxels
        )
        print(f"wrote {rewrite_config(loaded, presence=presence)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
