"""Is this image a CT of a person? Checks on the voxel values, before any network sees them.

A detector asked about a volume of NaN, a constant block or values that no tissue has would still answer
something; these checks refuse such input with one line instead. They do not try to recognise anatomy: a CT of the
wrong body region passes, and the model's presence probabilities say that its organs are not there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from organdetr.errors import NotAPatientCTError


@dataclass(frozen=True)
class CTContentLimits:
    """Hounsfield range of soft tissue and bone, and how much of the volume must fall in it."""

    body_hu_min: float = -200.0
    body_hu_max: float = 1500.0
    min_body_fraction: float = 0.001


def check_ct_content(image: sitk.Image, name: str = "image", limits: CTContentLimits | None = None) -> None:
    """Raise :class:`NotAPatientCTError` for NaN / infinite voxels, a constant volume or no voxel of tissue."""
    limits = limits or CTContentLimits()
    values = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(values.dtype, np.integer):  # integer voxels are always finite
        finite = np.isfinite(values)
        if not finite.all():
            share = 1.0 - float(finite.mean())
            raise NotAPatientCTError(f"{name}: {share:.0%} of the voxels are NaN or infinite; not a CT of a person")
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise NotAPatientCTError(f"{name}: every voxel is {low:g}; a constant volume is not a CT of a person")
    body_min, body_max = _bounds_for(values.dtype, limits.body_hu_min, limits.body_hu_max)
    body = np.count_nonzero((values >= body_min) & (values <= body_max)) / values.size
    if body < limits.min_body_fraction:
        raise NotAPatientCTError(
            f"{name}: no tissue values ({body:.2%} of voxels in {limits.body_hu_min:g}..{limits.body_hu_max:g} HU); "
            "the detector needs a CT of a person in Hounsfield units"
        )


def _bounds_for(dtype: np.dtype, low: float, high: float) -> tuple[float | int, float | int]:
    """Bounds to compare voxels of ``dtype`` with: for integer voxels the same test in their own type (v >= low
    exactly when v >= ceil(low)), which saves converting every voxel to float; otherwise the bounds as given."""
    if not np.issubdtype(dtype, np.integer) or not (math.isfinite(low) and math.isfinite(high)):
        return low, high
    info = np.iinfo(dtype)
    int_low, int_high = math.ceil(low), math.floor(high)
    if info.min <= int_low <= info.max and info.min <= int_high <= info.max:
        return int_low, int_high
    return low, high
