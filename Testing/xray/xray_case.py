"""The bundled OpenKBP CT pt_201 (PLI, 128^3) as the X-ray tests use it: images and each organ's surface corners."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

OPENKBP_CLASSES = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")


@dataclass(frozen=True)
class HeadNeckCase:
    ct_path: Path
    label_path: Path
    ct: sitk.Image
    label: sitk.Image
    corners: list[np.ndarray]  # per organ (label 1..7): surface voxel corners, world mm


def load_head_neck_case(ct_path: Path, label_path: Path) -> HeadNeckCase:
    from organdetr.xray.scenes import organ_corners

    label = sitk.ReadImage(str(label_path))
    corners = organ_corners(label, len(OPENKBP_CLASSES))
    return HeadNeckCase(ct_path, label_path, sitk.ReadImage(str(ct_path)), label, corners)
