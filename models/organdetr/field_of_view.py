"""Training windows with random fields of view, so that the detector learns when an organ is NOT in a scan.

A radiologist's scan can stop anywhere: at the mandible, above the larynx, or hold no head-and-neck organ at all.
Each training sample is cut from a case the way such a scan would be (a random slab along the head-foot axis, half
of them ending at an organ's first or last slice, now and then narrower in-plane, now and then a slab with no
annotated organ), placed at a random position in the network window, and padded with air, exactly as
:mod:`organdetr.windows` pads a small scan at inference.

Partial-label rules (``annotated`` per sample):

* an annotated organ that the cut removes entirely is a TRUE negative: it stays annotated and has no box, so every
  query is trained away from it;
* an annotated organ of which only a sliver remains (below ``min_visible_fraction`` of its voxels) is ambiguous:
  its voxels are cleared and it counts as unannotated for that sample, so it is trained neither way;
* an organ the case does not annotate stays unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import FieldOfViewConfig
from .windows import Window

HEAD_FOOT_AXIS = 2
# No simulated cut (a DetectionDataset without field-of-view cuts, e.g. --no-augment): the whole case, at a random
# position under a window smaller than it.
WHOLE_SCAN = FieldOfViewConfig(cut_probability=0.0, inplane_cut_probability=0.0, empty_probability=0.0)
# The shortest slab or in-plane extent a cut keeps, in voxels (a scan thinner than this is not a volume).
MIN_EXTENT_VOXELS = 8


@dataclass
class TrainingWindow:
    """One network window cut from a case, with the sample's own annotated flags."""

    image: torch.Tensor  # [C, *window]
    label_map: torch.Tensor  # [*window] uint8
    annotated: torch.Tensor  # [K] bool


def _organ_free_slabs(label_map: torch.Tensor, annotated: torch.Tensor) -> list[tuple[int, int]]:
    """Head-foot index ranges ``[lo, hi)`` without a voxel of any annotated organ, at least MIN_EXTENT_VOXELS long."""
    annotated_values = (annotated.nonzero()[:, 0] + 1).tolist()
    other_axes = tuple(a for a in range(3) if a != HEAD_FOOT_AXIS)
    values = torch.tensor(annotated_values, dtype=label_map.dtype, device=label_map.device)
    has_organ = torch.isin(label_map, values).any(dim=other_axes)
    slabs, start = [], None
    for index, occupied in enumerate([*has_organ.tolist(), True]):
        if not occupied and start is None:
            start = index
        elif occupied and start is not None:
            if index - start >= MIN_EXTENT_VOXELS:
                slabs.append((start, index))
            start = None
    return slabs


def _random_extent(rng: np.random.Generator, length: int, min_fraction: float) -> tuple[int, int]:
    """A random sub-range ``[lo, hi)`` of ``[0, length)`` holding at least ``min_fraction`` of it."""
    shortest = min(length, max(MIN_EXTENT_VOXELS, int(np.ceil(min_fraction * length))))
    kept = int(rng.integers(shortest, length + 1))
    lo = int(rng.integers(0, length - kept + 1))
    return lo, lo + kept


def _landmark_cut(
    rng: np.random.Generator, label_map: torch.Tensor, annotated: torch.Tensor, config: FieldOfViewConfig
) -> tuple[int, int] | None:
    """A head-foot slab ending near a random annotated organ's first or last slice, on a random side of it (None
    when no annotated organ is in the case)."""
    other_axes = tuple(a for a in range(3) if a != HEAD_FOOT_AXIS)
    present = [value for value in (annotated.nonzero()[:, 0] + 1).tolist() if (label_map == value).any()]
    if not present:
        return None
    value = present[int(rng.integers(len(present)))]
    slices = (label_map == value).any(dim=other_axes).nonzero()[:, 0]
    length = int(label_map.shape[HEAD_FOOT_AXIS])
    edge = int(slices[0] if rng.random() < 0.5 else slices[-1] + 1)
    edge += int(rng.integers(-config.landmark_margin_voxels, config.landmark_margin_voxels + 1))
    edge = min(max(edge, MIN_EXTENT_VOXELS), length - MIN_EXTENT_VOXELS)
    return (0, edge) if rng.random() < 0.5 else (edge, length)


def _field_of_view(
    rng: np.random.Generator, label_map: torch.Tensor, annotated: torch.Tensor, config: FieldOfViewConfig
) -> list[tuple[int, int]]:
    """The part of the case that the simulated scan holds, per axis ``[lo, hi)``."""
    extent = [(0, int(n)) for n in label_map.shape]
    slabs = _organ_free_slabs(label_map, annotated)
    if slabs and rng.random() < config.empty_probability:
        lo, hi = slabs[int(rng.integers(len(slabs)))]
        sub_lo, sub_hi = _random_extent(rng, hi - lo, 0.0)
        extent[HEAD_FOOT_AXIS] = (lo + sub_lo, lo + sub_hi)
    elif rng.random() < config.cut_probability:
        landmark = (
            _landmark_cut(rng, label_map, annotated, config) if rng.random() < config.landmark_cut_fraction else None
        )
        extent[HEAD_FOOT_AXIS] = landmark or _random_extent(
            rng, label_map.shape[HEAD_FOOT_AXIS], config.min_cut_fraction
        )
    for axis in range(3):
        if axis != HEAD_FOOT_AXIS and rng.random() < config.inplane_cut_probability:
            extent[axis] = _random_extent(rng, label_map.shape[axis], config.min_inplane_fraction)
    return extent


def _window_over(rng: np.random.Generator, extent: Sequence[tuple[int, int]], window: Sequence[int]) -> Window:
    """A window at a random position that holds the whole extent where it fits, else lies inside it."""
    start = []
    for (lo, hi), size in zip(extent, window, strict=True):
        first, last = (hi - size, lo) if hi - lo <= size else (lo, hi - size)
        start.append(int(rng.integers(first, last + 1)))
    return Window(start=tuple(start), size=tuple(int(s) for s in window))


def sample_training_window(
    image: torch.Tensor,
    label_map: torch.Tensor,
    annotated: torch.Tensor,
    window: Sequence[int],
    config: FieldOfViewConfig,
    rng: np.random.Generator,
) -> TrainingWindow:
    """Cut a random field of view of a preprocessed case into one network window (see the module docstring)."""
    num_classes = annotated.numel()
    extent = _field_of_view(rng, label_map, annotated, config)
    region = tuple(slice(lo, hi) for lo, hi in extent)
    placed = _window_over(rng, extent, window)
    relative = Window(start=tuple(s - lo for s, (lo, _) in zip(placed.start, extent, strict=True)), size=placed.size)
    image_window = relative.extract(image[(slice(None), *region)].float())
    label_window = relative.extract(label_map[region][None])[0]
    before = torch.bincount(label_map.flatten().long(), minlength=num_classes + 1)[1:]
    after = torch.bincount(label_window.flatten().long(), minlength=num_classes + 1)[1:]
    sliver = (after > 0) & (after < config.min_visible_fraction * before)
    sample_annotated = annotated.clone() & ~sliver
    if sliver.any():
        cleared = torch.isin(label_window, (sliver.nonzero()[:, 0] + 1).to(label_window.dtype))
        label_window = label_window.masked_fill(cleared, 0)
    return TrainingWindow(image=image_window, label_map=label_window, annotated=sample_annotated)
