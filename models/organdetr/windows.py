"""Network windows over a volume of any extent: where they lie, how to cut them out, how boxes map back.

The physical-space contract (:class:`organdetr.config.PreprocessConfig` with ``target_spacing_mm``) gives volumes of
any shape; the network always sees ``spatial_size`` voxels. Along each axis a volume longer than the window gets
overlapping windows that tile it exactly from edge to edge; a shorter one gets a single window centred on it, the
rest padded with air (0 after intensity scaling). Window boxes are normalised to the window; :func:`box_to_volume`
turns them into boxes normalised to the whole volume, which is what the geometry of the backend takes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# A box edge closer than this (in voxels) to an inner window border is taken to be cut off by the window.
CUT_EDGE_VOXELS = 1.0


def _stride(window: int, overlap: float) -> int:
    return max(1, int(window * (1.0 - overlap)))


def window_count(length: int, window: int, overlap: float) -> int:
    """How many windows cover ``length`` voxels along one axis."""
    return 1 if length <= window else math.ceil((length - window) / _stride(window, overlap)) + 1


def fit_to_windows(length: int, window: int, overlap: float, zoom: float) -> int:
    """``length``, or the length one window fewer covers when ``length`` is at most ``zoom`` (a fraction) longer
    than that: a scan a few slices longer than a window is resampled slightly coarser instead of costing a window."""
    count = window_count(length, window, overlap)
    if count == 1 or zoom <= 0:
        return length
    fewer = window + (count - 2) * _stride(window, overlap)
    return fewer if length <= fewer * (1.0 + zoom) else length


def axis_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis (negative: the window begins in the padding)."""
    if length <= window:
        return [-((window - length) // 2)]
    count = window_count(length, window, overlap)
    # Spread the windows evenly so that the last one ends exactly at the volume's end.
    return [round(i * (length - window) / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class Window:
    """One network window: its first voxel in volume indices (may be negative) and its size."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def overlap(self, volume_shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The part of the volume the window covers: ``(slices in the volume, the same voxels in the window)``."""
        lo = [max(0, s) for s in self.start]
        hi = [min(n, s + w) for n, s, w in zip(volume_shape, self.start, self.size, strict=True)]
        in_volume = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        in_window = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, self.start, strict=True))
        return in_volume, in_window

    def extract(self, image: torch.Tensor) -> torch.Tensor:
        """``image [C, D0, D1, D2]`` -> ``[C, *size]``; voxels outside the volume are 0 (air)."""
        in_volume, in_window = self.overlap(image.shape[1:])
        window = image.new_zeros((image.shape[0], *self.size))
        window[(slice(None), *in_window)] = image[(slice(None), *in_volume)]
        return window

    def add_to_volume(self, total: torch.Tensor, values: torch.Tensor) -> None:
        """Add this window's ``values [C, *size]`` into the volume-sized ``total [C, D0, D1, D2]`` (in place)."""
        self.add_region_to_volume(total, tuple(slice(0, n) for n in self.size), values)

    def add_region_to_volume(self, total: torch.Tensor, region: Sequence[slice], values: torch.Tensor) -> None:
        """Add ``values [C, *region size]``, which cover ``region`` (slices of this window's grid), into ``total``."""
        in_volume, in_window = self.overlap(total.shape[1:])
        lo = [max(r.start, w.start) for r, w in zip(region, in_window, strict=True)]
        hi = [min(r.stop, w.stop) for r, w in zip(region, in_window, strict=True)]
        if any(a >= b for a, b in zip(lo, hi, strict=True)):
            return
        target = tuple(
            slice(v.start + a - w.start, v.start + b - w.start)
            for a, b, v, w in zip(lo, hi, in_volume, in_window, strict=True)
        )
        source = tuple(slice(a - r.start, b - r.start) for a, b, r in zip(lo, hi, region, strict=True))
        total[(slice(None), *target)] += values[(slice(None), *source)]

    def coarsened(self, strides: Sequence[int]) -> Window:
        """This window on a grid ``strides`` times coarser (a start that is not a multiple is rounded down)."""
        return Window(
            start=tuple(s // k for s, k in zip(self.start, strides, strict=True)),
            size=tuple(w // k for w, k in zip(self.size, strides, strict=True)),
        )

    def box_to_volume(self, box: torch.Tensor, volume_shape: Sequence[int]) -> torch.Tensor:
        """Normalised centre-size box(es) ``[..., 6]`` of this window -> normalised to the whole volume."""
        size = torch.tensor(self.size, dtype=box.dtype)
        start = torch.tensor(self.start, dtype=box.dtype)
        shape = torch.tensor(list(volume_shape), dtype=box.dtype)
        centre = (start + box[..., :3] * size) / shape
        extent = box[..., 3:] * size / shape
        return torch.cat([centre, extent], dim=-1)

    def cuts_box(self, box: torch.Tensor, volume_shape: Sequence[int]) -> bool:
        """Whether a window box touches a window border that lies INSIDE the volume (the organ may go on)."""
        size = torch.tensor(self.size, dtype=torch.float32)
        lo = (box[:3] - box[3:] / 2) * size
        hi = (box[:3] + box[3:] / 2) * size
        for axis in range(3):
            start, length = self.start[axis], volume_shape[axis]
            if start > 0 and lo[axis] < CUT_EDGE_VOXELS:
                return True
            if start + self.size[axis] < length and hi[axis] > self.size[axis] - CUT_EDGE_VOXELS:
                return True
        return False


def plan_windows(volume_shape: Sequence[int], window: Sequence[int], overlap: float) -> list[Window]:
    """All windows covering a volume (one when it fits the window)."""
    starts = [axis_starts(int(n), int(w), overlap) for n, w in zip(volume_shape, window, strict=True)]
    return [Window(start=tuple(s), size=tuple(int(w) for w in window)) for s in itertools.product(*starts)]
