"""Render the README picture: axial, coronal and sagittal CT slices with the organ boxes that cross them.

Without ``--result`` the boxes are the organs' label-map bounding boxes of OpenKBP patient pt_201 (the ideal
detector's output, built with the backend's geometry); with ``--result`` (an ``organdetr detect`` JSON of the same CT)
the model's boxes are drawn thick over the thin reference boxes. The caption says which. Offscreen VTK:

    organdetr detect Testing/Data/openkbp_pt_201/ct.nii.gz -o pt_201.json
    python docs/render_readme_picture.py --result pt_201.json [--output docs/images/boxes_on_ct.png]
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np
import SimpleITK as sitk
import vtk
from organdetr.preprocess import index_to_physical_matrix
from organdetr_backend.export import read_result_json
from organdetr_backend.geometry import physical_box_corners, voxel_bounds_to_physical
from organdetr_backend.organ_terminology import organ_term
from organdetr_backend.schema import VoxelBounds
from vtk.util.numpy_support import numpy_to_vtk

ROOT = Path(__file__).resolve().parents[1]

CASE = ROOT / "Testing" / "Data" / "openkbp_pt_201"
CLASSES = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]
WINDOW_HU = (-160.0, 240.0)  # soft-tissue window
SIZE = (1500, 600)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def slice_actor(image: vtk.vtkImageData, extent: tuple[int, ...], ijk_to_ras: np.ndarray) -> vtk.vtkImageActor:
    colours = vtk.vtkImageMapToWindowLevelColors()
    colours.SetInputData(image)
    colours.SetWindow(WINDOW_HU[1] - WINDOW_HU[0])
    colours.SetLevel(sum(WINDOW_HU) / 2)
    colours.SetOutputFormatToRGB()
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputConnection(colours.GetOutputPort())
    actor.SetDisplayExtent(*extent)
    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(ijk_to_ras.ravel())
    actor.SetUserMatrix(matrix)
    return actor


def box_actor(corners_ras: np.ndarray, colour, width: float) -> vtk.vtkActor:
    points = vtk.vtkPoints()
    for corner in corners_ras:
        points.InsertNextPoint(*corner)
    lines = vtk.vtkCellArray()
    for a, b in itertools.combinations(range(8), 2):
        if bin(a ^ b).count("1") == 1:  # corners differing in one axis share an edge
            lines.InsertNextCell(2, (a, b))
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetLines(lines)
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(polydata)
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*colour)
    actor.GetProperty().SetLineWidth(width)
    actor.GetProperty().SetLighting(False)
    return actor


# (index axis held constant, camera direction in RAS, view up in RAS, title): radiological views of the PLI image.
VIEWS = (
    (2, (0, 0, -1), (0, 1, 0), "axial"),
    (0, (0, 1, 0), (0, 0, 1), "coronal"),
    (1, (-1, 0, 0), (0, 0, 1), "sagittal"),
)
MARGIN_VOXELS = 6
MODEL_WIDTH, REFERENCE_WIDTH = 3.0, 1.0


def text_actor(text: str, position: tuple[int, int], colour, size: int) -> vtk.vtkTextActor:
    actor = vtk.vtkTextActor()
    actor.SetInput(text)
    actor.GetTextProperty().SetFontSize(size)
    actor.GetTextProperty().SetColor(*colour)
    actor.SetDisplayPosition(*position)
    return actor


def main(output: Path, result_path: Path | None) -> None:
    image = sitk.ReadImage(str(CASE / "ct.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE / "oar_label.nii.gz"))).transpose(2, 1, 0)
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)  # k, j, i: VTK's x-fastest order
    data = vtk.vtkImageData()
    data.SetDimensions(*image.GetSize())
    data.GetPointData().SetScalars(numpy_to_vtk(voxels.ravel(), deep=True))
    ijk_to_ras = LPS_TO_RAS @ index_to_physical_matrix(image)

    organs = np.argwhere(labels > 0)
    low = np.maximum(organs.min(0) - MARGIN_VOXELS, 0)
    high = np.minimum(organs.max(0) + MARGIN_VOXELS, np.array(image.GetSize()) - 1)
    centre = np.argwhere(np.isin(labels, [3, 4, 7])).mean(0).astype(int)  # through the parotids and mandible
    boxes = []
    for class_id, name in enumerate(CLASSES, start=1):
        where = np.argwhere(labels == class_id)
        bounds = VoxelBounds(min_ijk=tuple(where.min(0).tolist()), max_ijk_inclusive=tuple(where.max(0).tolist()))
        corners = physical_box_corners(voxel_bounds_to_physical(bounds, image)) * LPS_TO_RAS.diagonal()[:3]
        boxes.append((bounds, corners, organ_term(name), REFERENCE_WIDTH if result_path else MODEL_WIDTH))
    if result_path is not None:
        for detection in read_result_json(result_path).detections:
            corners = physical_box_corners(detection.box) * LPS_TO_RAS.diagonal()[:3]
            boxes.append((detection.voxel_bounds, corners, organ_term(detection.label), MODEL_WIDTH))

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetSize(*SIZE)
    window.SetNumberOfLayers(2)
    for view, (axis, direction, up, _title) in enumerate(VIEWS):
        renderer = vtk.vtkRenderer()
        renderer.SetViewport(view / 3, 0.08, (view + 1) / 3, 0.92)
        renderer.SetBackground(0.05, 0.05, 0.08)
        extent = [int(v) for pair in zip(low, high, strict=True) for v in pair]
        extent[2 * axis] = extent[2 * axis + 1] = int(centre[axis])
        renderer.AddActor(slice_actor(data, tuple(extent), ijk_to_ras))
        for bounds, corners, term, width in boxes:  # boxes the slice cuts through
            if bounds.min_ijk[axis] <= centre[axis] <= bounds.max_ijk_inclusive[axis]:
                renderer.AddActor(box_actor(corners, term.colour, width))
        camera = renderer.GetActiveCamera()
        camera.ParallelProjectionOn()
        camera.SetFocalPoint(0, 0, 0)
        camera.SetPosition(*(-np.array(direction, dtype=float)))
        camera.SetViewUp(*up)
        renderer.ResetCamera()
        camera.Zoom(1.35)
        window.AddRenderer(renderer)

    overlay = vtk.vtkRenderer()
    overlay.SetLayer(1)
    overlay.SetInteractive(False)
    for view, (_, _, _, title) in enumerate(VIEWS):
        overlay.AddViewProp(text_actor(title, (view * SIZE[0] // 3 + 12, 58), (0.8, 0.8, 0.8), 22))
    legend_x = 20
    for _, _, term, _ in boxes[: len(CLASSES)]:
        overlay.AddViewProp(text_actor(term.display_name, (legend_x, SIZE[1] - 34), term.colour, 20))
        legend_x += 14 * len(term.display_name) + 20
    caption = (
        "Shipped Organ-DETR model's boxes (thick) and reference label-map boxes (thin), OpenKBP pt_201 head-and-neck CT"
        if result_path
        else "Organ boxes from the reference label map (not a model prediction) on OpenKBP pt_201 head-and-neck CT"
    )
    overlay.AddViewProp(text_actor(caption, (20, 12), (0.9, 0.9, 0.9), 20))
    window.AddRenderer(overlay)
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(output))
    writer.SetInputConnection(grabber.GetOutputPort())
    writer.Write()
    print(f"wrote {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, default=None, help="organdetr detect JSON of the pt_201 CT")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "boxes_on_ct.png")
    arguments = parser.parse_args()
    main(arguments.output, arguments.result)
