"""Helper for the training tests: an MSD-style dataset.json in a temporary folder pointing at the real pt_201 case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import SimpleITK as sitk

CLASS_NAMES = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
UPPER_SLICES = 80
PARTIAL_KEPT = (1, 7)  # label values of Brainstem and Mandible
LABELS = {"0": "background", **{str(i + 1): name for i, name in enumerate(CLASS_NAMES)}}


def write_dataset_json(folder: Path, data_dir: Path, **overrides: Any) -> Path:
    """``folder/dataset.json`` with two training cases and one validation case built from OpenKBP pt_201.

    The second training case is pt_201 cut to its upper 80 slices with only Brainstem and Mandible kept in the label
    map (a real, partially labelled volume of another size), written into ``folder`` so that paths relative to the
    JSON file are exercised.
    """
    source = data_dir / "openkbp_pt_201"
    case_b = folder / "pt_201_upper"
    case_b.mkdir(parents=True, exist_ok=True)
    ct = sitk.ReadImage(str(source / "ct.nii.gz"))[:, :, :UPPER_SLICES]
    label = sitk.ReadImage(str(source / "oar_label.nii.gz"))[:, :, :UPPER_SLICES]
    kept = (label == PARTIAL_KEPT[0]) | (label == PARTIAL_KEPT[1])
    sitk.WriteImage(ct, str(case_b / "ct.nii.gz"))
    sitk.WriteImage(sitk.Cast(kept, label.GetPixelID()) * label, str(case_b / "oar_label.nii.gz"))
    full = {"image": str(source / "ct.nii.gz"), "label": str(source / "oar_label.nii.gz")}
    upper = {"image": "pt_201_upper/ct.nii.gz", "label": "pt_201_upper/oar_label.nii.gz"}
    content: dict[str, Any] = {
        "name": "pt_201 test set",
        "labels": LABELS,
        "training": [{**full, "annotated": list(CLASS_NAMES)}, {**upper, "annotated": ["Brainstem", "Mandible"]}],
        "validation": [dict(full)],
    }
    content.update(overrides)
    path = folder / "dataset.json"
    path.write_text(json.dumps(content, indent=1), encoding="utf-8")
    return path
