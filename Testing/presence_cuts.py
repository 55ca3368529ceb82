"""Scans cut the way radiologists' scans end: presence checks built from a case's own label map.

* ``below_head``: the scan starts below the mandible's lowest voxel, so the organs above the cut are gone;
* ``above_larynx``: the scan ends above the larynx's highest voxel, so the larynx and what lies below it are gone;
* ``uncut``: the whole case.

The truth for each organ follows the training rule of :mod:`organdetr.field_of_view`: an annotated organ with no
voxel left is absent, one with at least ``MIN_VISIBLE_FRACTION`` of its voxels left is present, a sliver in between
is ambiguous (not counted); organs the case does not annotate are not counted either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

MIN_VISIBLE_FRACTION = 0.2
CUTS = ("uncut", "below_head", "above_larynx")
# The organ whose extreme slice defines each cut, and which side of it the scan keeps.
_CUT_RULES = {"below_head": ("Mandible", "inferior"), "above_larynx": ("Larynx", "superior")}


def _head_foot_axis(image: sitk.Image) -> tuple[int, float]:
    """The index axis closest to the patient's head-foot (LPS z) axis, and the sign of z along it."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(direction[2])))
    return axis, float(np.sign(direction[2, axis]))


def _ijk(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def cut_case(
    image: sitk.Image, label: sitk.Image, cut: str, class_names: Sequence[str]
) -> tuple[sitk.Image, sitk.Image] | None:
    """The case as a scan cut by ``cut`` (None when the defining organ is not in the label map)."""
    if cut == "uncut":
        return image, label
    organ, keep = _CUT_RULES[cut]
    axis, z_sign = _head_foot_axis(image)
    slices = np.nonzero(
        np.any(_ijk(label) == class_names.index(organ) + 1, axis=tuple(a for a in range(3) if a != axis))
    )[0]
    if slices.size == 0:
        return None
    keep_low_indices = (keep == "inferior") == (z_sign > 0)  # low indices are inferior when z grows with the index
    lo, hi = (0, int(slices.min())) if keep_low_indices else (int(slices.max()) + 1, image.GetSize()[axis])
    if hi - lo < 8:
        return None
    index = [slice(None)] * 3
    index[axis] = slice(lo, hi)
    return image[tuple(index)], label[tuple(index)]


def presence_truth(
    full_label: sitk.Image, cut_label: sitk.Image, annotated: Sequence[str], class_names: Sequence[str]
) -> dict[str, bool | None]:
    """Per annotated organ: True (present), False (absent) or None (a sliver: ambiguous)."""
    full, kept = _ijk(full_label), _ijk(cut_label)
    truth: dict[str, bool | None] = {}
    for value, name in enumerate(class_names, start=1):
        total = int((full == value).sum())
        if name not in annotated and total == 0:
            continue
        left = int((kept == value).sum())
        truth[name] = False if left == 0 else (True if left >= MIN_VISIBLE_FRACTION * total else None)
    return truth
