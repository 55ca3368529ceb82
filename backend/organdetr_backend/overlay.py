"""Quick-look PNG of a detection result for people without Slicer.

One row per organ: axial, coronal and sagittal slices through the centre of its box, resampled from the input
image onto an axis-aligned LPS display grid (so oblique scans look upright), shown in radiological convention
(patient right on the left of the axial and coronal views, anterior on the left of the sagittal view), with every
box that the slice cuts drawn as the outline of its projection and labelled with organ name and score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from scipy.spatial import ConvexHull, QhullError

from .geometry import HALF_VOXEL, index_box_to_physical, physical_box_corners
from .organ_terminology import organ_term
from .output_file import atomic_output
from .schema import Detection, DetectionResult

AIR_HU = -1024.0


@dataclass(frozen=True)
class View:
    """A display plane: the LPS axis it cuts, the LPS axes shown horizontally and vertically, edge letters."""

    name: str
    normal: int
    horizontal: int
    vertical: int
    letters: tuple[str, str, str, str]  # left, right, bottom, top
    top_is_low: bool  # axial: anterior (low P) at the top


VIEWS = (
    View("axial", normal=2, horizontal=0, vertical=1, letters=("R", "L", "P", "A"), top_is_low=True),
    View("coronal", normal=1, horizontal=0, vertical=2, letters=("R", "L", "I", "S"), top_is_low=False),
    View("sagittal", normal=0, horizontal=1, vertical=2, letters=("A", "P", "I", "S"), top_is_low=False),
)


@dataclass(frozen=True)
class OverlaySettings:
    """Look of the quick-look figure."""

    window_min_hu: float = -160.0  # soft-tissue window (W 400, L 40)
    window_max_hu: float = 240.0
    max_pixels: int = 256  # the display grid's longest side
    max_rows: int = 24  # organs shown (highest scores first)
    panel_inches: float = 3.0
    dpi: int = 100
    line_width: float = 1.5
    font_size: float = 7.0


def _physical_extent(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """LPS bounding box of the image's outer voxel edges."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    corners = physical_box_corners(index_box_to_physical(np.full(3, -HALF_VOXEL), size - HALF_VOXEL, image))
    return corners.min(axis=0), corners.max(axis=0)


def _display_slice(
    image: sitk.Image, view: View, position: float, low: np.ndarray, high: np.ndarray, pixel_mm: float
) -> np.ndarray:
    """The plane ``LPS[view.normal] = position`` on an axis-aligned grid: array [vertical, horizontal] in HU."""
    size = np.maximum(np.ceil((high - low) / pixel_mm).astype(int), 1)
    size[view.normal] = 1
    origin = low + 0.5 * pixel_mm
    origin[view.normal] = position
    plane = sitk.Resample(
        image,
        [int(v) for v in size],
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        [pixel_mm] * 3,
        np.eye(3).flatten().tolist(),
        AIR_HU,
        sitk.sitkFloat32,
    )
    array = sitk.GetArrayFromImage(plane)  # numpy order (z, y, x) = LPS axes (2, 1, 0)
    # The remaining numpy axes are the other two LPS axes in decreasing order, which every view shows as
    # (vertical, horizontal).
    return np.squeeze(array, axis=2 - view.normal)


def _hull(points: np.ndarray) -> np.ndarray:
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # a flat box: draw its bounding rectangle
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def _draw_view(axes, image, view: View, centre, detections, highlight, low, high, pixel_mm, settings) -> None:
    position = float(centre[view.normal])
    array = _display_slice(image, view, position, low, high, pixel_mm)
    extent = (low[view.horizontal], high[view.horizontal], low[view.vertical], high[view.vertical])
    axes.imshow(
        array,
        cmap="gray",
        vmin=settings.window_min_hu,
        vmax=settings.window_max_hu,
        origin="lower",
        extent=extent,
        interpolation="nearest",
    )
    for detection in detections:
        corners = physical_box_corners(detection.box)
        if not corners[:, view.normal].min() <= position <= corners[:, view.normal].max():
            continue
        polygon = _hull(corners[:, [view.horizontal, view.vertical]])
        color = organ_term(detection.label).colour
        is_main = detection is highlight
        axes.add_patch(
            Polygon(
                polygon,
                closed=True,
                fill=False,
                edgecolor=color,
                linewidth=settings.line_width * (1.0 if is_main else 0.6),
                linestyle="-" if is_main else "--",
            )
        )
        top = polygon[:, 1].min() if view.top_is_low else polygon[:, 1].max()
        axes.text(
            polygon[:, 0].min(),
            top,
            f"{detection.label} {detection.score:.2f}",
            color=color,
            fontsize=settings.font_size,
            va="bottom" if not view.top_is_low else "top",
            clip_on=True,
        )
    if view.top_is_low:
        axes.invert_yaxis()
    axes.set_xticks([])
    axes.set_yticks([])
    left, right, bottom, top_letter = view.letters
    style = {"color": "yellow", "fontsize": settings.font_size, "transform": axes.transAxes}
    axes.text(0.01, 0.5, left, ha="left", va="center", **style)
    axes.text(0.99, 0.5, right, ha="right", va="center", **style)
    axes.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
    axes.text(0.5, 0.99, top_letter, ha="center", va="top", **style)


def render_overlay(
    image: sitk.Image,
    result: DetectionResult,
    path: str | os.PathLike,
    overwrite: bool = False,
    settings: OverlaySettings | None = None,
) -> Path:
    """Write the quick-look PNG of ``result`` on ``image`` (the image the result was computed on) to ``path``."""
    settings = settings or OverlaySettings()
    low, high = _physical_extent(image)
    pixel_mm = max(min(image.GetSpacing()), float((high - low).max()) / settings.max_pixels)
    shown = sorted(result.detections, key=lambda d: d.score, reverse=True)[: settings.max_rows]
    rows: list[tuple[str, np.ndarray, Detection | None]] = [
        (f"{d.label} ({d.score:.2f})", np.asarray(d.box.center), d) for d in shown
    ] or [("no detections", 0.5 * (low + high), None)]

    figure = Figure(figsize=(settings.panel_inches * len(VIEWS), settings.panel_inches * len(rows)), dpi=settings.dpi)
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(rows), len(VIEWS), squeeze=False)
    for row, (title, centre, highlight) in enumerate(rows):
        for column, view in enumerate(VIEWS):
            axes = grid[row, column]
            _draw_view(axes, image, view, centre, result.detections, highlight, low, high, pixel_mm, settings)
            axes.set_title(f"{title}: {view.name}", fontsize=settings.font_size + 1)
    figure.suptitle(f"{result.image.source} - {result.model.name} {result.model.version} (LPS)", fontsize=9)
    figure.tight_layout()
    with atomic_output(path, overwrite) as temp:
        figure.savefig(temp, format="png")
    return Path(path)
