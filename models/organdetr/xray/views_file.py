"""A set of X-ray views on disk: a folder with one image per view and a ``views.json`` giving each view's geometry.

The format is what a calibrated C-arm or a set of radiographs could also produce, not only our renderer::

    {
      "format": "organdetr.xray-views", "version": 1,
      "coordinate_system": "LPS", "units": "mm", "pixel_values": "line_integral",
      "isocenter": [x, y, z],                      # optional; else the point nearest to all principal rays
      "c_arm": {...},                              # optional: the CArmGeometry that generated the views
      "volume": {...},                             # optional: the CT the views were rendered from (result schema's
                                                   #   ImageInfo); carving then reports boxes on that CT's grid
      "views": [{"image": "view_000.mha", "rows": 128, "columns": 128,
                 "intrinsics": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   # pixels
                 "rotation": [[...], [...], [...]], "translation": [tx, ty, tz],  # camera-from-world, mm
                 "angle_deg": 36.0}, ...]                                  # angle: informative
    }

Conventions of the geometry: :mod:`organdetr.xray.camera`. Images are any 2D scalar image SimpleITK reads (``.mha``,
``.nrrd``, ``.nii.gz``, ``.tif``, ``.png``, DICOM), ``rows x columns`` pixels, all finite; pixel values are line
integrals ``-log(I / I0)``. Every problem (bad JSON, missing or extra keys, non-finite numbers, a rotation that is not
orthonormal, a non-positive focal length, a wrong image size, a NaN pixel, a file outside the folder) is a one-line
:class:`~organdetr.errors.UserInputError` naming the file and the place in it. Writing is atomic: the folder appears
complete or not at all.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch
from organdetr_client.schema import ImageInfo
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UserInputError
from .camera import MAX_DETECTOR_PIXELS, Camera, CArmGeometry, closest_point_to_principal_rays

VIEWS_FILE = "views.json"
FORMAT_NAME = "organdetr.xray-views"
FORMAT_VERSION = 1
MAX_VIEWS = 360

Vector3 = tuple[float, float, float]
Matrix3 = tuple[Vector3, Vector3, Vector3]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ViewEntry(_Strict):
    image: str = Field(description="image file name inside the views folder")
    rows: int = Field(ge=1, le=MAX_DETECTOR_PIXELS)
    columns: int = Field(ge=1, le=MAX_DETECTOR_PIXELS)
    intrinsics: Matrix3
    rotation: Matrix3
    translation: Vector3
    angle_deg: float | None = None


class CArmEntry(_Strict):
    num_views: int
    arc_deg: float
    start_angle_deg: float
    source_to_isocenter_mm: float
    source_to_detector_mm: float
    rows: int
    columns: int
    pixel_spacing_mm: float
    isocenter: Vector3


class ViewsDocument(_Strict):
    format: Literal["organdetr.xray-views"] = FORMAT_NAME
    version: Literal[1] = FORMAT_VERSION
    coordinate_system: Literal["LPS"] = "LPS"
    units: Literal["mm"] = "mm"
    pixel_values: Literal["line_integral"] = "line_integral"
    isocenter: Vector3 | None = None
    c_arm: CArmEntry | None = None
    volume: ImageInfo | None = None
    views: list[ViewEntry] = Field(min_length=1, max_length=MAX_VIEWS)


@dataclass(eq=False)
class ViewSet:
    """Views in memory: cameras, images ``[views, rows, columns]`` (float32) and what the file says about the
    acquisition."""

    cameras: list[Camera]
    images: torch.Tensor
    isocenter: np.ndarray  # given, or the point nearest to the principal rays
    volume: ImageInfo | None = None
    c_arm: CArmGeometry | None = None
    angles_deg: list[float | None] | None = None


def _image_name(index: int) -> str:
    return f"view_{index:03d}.mha"


def _location(error: ValidationError) -> str:
    first = error.errors()[0]
    place = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]).lstrip(".")
    return f"{place}: {first['msg']}" if place else first["msg"]


def _parse_document(path: Path) -> ViewsDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"{path}: no {VIEWS_FILE} in the views folder") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: cannot be read ({error})") from None
    try:
        return ViewsDocument.model_validate_json(text)
    except ValidationError as error:
        raise UserInputError(f"{path}: {_location(error)}") from None


def _camera(path: Path, index: int, view: ViewEntry) -> Camera:
    try:
        matrices = (np.array(view.intrinsics), np.array(view.rotation), np.array(view.translation))
        return Camera(*matrices, view.rows, view.columns)
    except UserInputError as error:
        raise UserInputError(f"{path}: views[{index}]: {error}") from None


def _read_view_image(folder: Path, index: int, view: ViewEntry) -> np.ndarray:
    if Path(view.image).name != view.image or view.image in ("", ".", ".."):
        raise UserInputError(f"{folder / VIEWS_FILE}: views[{index}].image must be a file name inside the folder")
    path = folder / view.image
    if not path.is_file():
        raise UserInputError(f"{path}: no such image (views[{index}])")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise UserInputError(f"{path}: not a readable image ({message})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per pixel; need 1")
    pixels = sitk.GetArrayFromImage(image).astype(np.float32)
    if pixels.ndim == 3 and pixels.shape[0] == 1:  # a 2D image stored as a one-slice volume
        pixels = pixels[0]
    if pixels.shape != (view.rows, view.columns):
        expected = (view.rows, view.columns)
        raise UserInputError(f"{path}: {pixels.shape} pixels (rows, columns); {VIEWS_FILE} says {expected}")
    if not np.isfinite(pixels).all():
        raise UserInputError(f"{path}: has non-finite pixels")
    return pixels


def read_views(folder: str | os.PathLike) -> ViewSet:
    """Read and validate a views folder: ``views.json`` and every image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: not a views folder (expected a folder holding {VIEWS_FILE})")
    path = folder / VIEWS_FILE
    document = _parse_document(path)
    cameras = [_camera(path, i, view) for i, view in enumerate(document.views)]
    if len({(c.rows, c.columns) for c in cameras}) != 1:
        raise UserInputError(f"{path}: views have different detector sizes; all must be equal")
    images = torch.from_numpy(np.stack([_read_view_image(folder, i, v) for i, v in enumerate(document.views)]))
    c_arm = None
    if document.c_arm is not None:
        try:
            c_arm = CArmGeometry(**document.c_arm.model_dump())
        except UserInputError as error:
            raise UserInputError(f"{path}: c_arm: {error}") from None
    if document.isocenter is not None:
        isocenter = np.array(document.isocenter)
    elif len(cameras) >= 2:
        try:
            isocenter = closest_point_to_principal_rays(cameras)
        except UserInputError as error:
            raise UserInputError(f"{path}: {error}") from None
    else:
        raise UserInputError(f"{path}: a single view needs an isocenter")
    angles = [view.angle_deg for view in document.views]
    return ViewSet(cameras, images, isocenter, document.volume, c_arm, angles)


def _document(views: ViewSet) -> ViewsDocument:
    angles = views.angles_deg or [None] * len(views.cameras)
    entries = [
        ViewEntry(
            image=_image_name(i),
            rows=camera.rows,
            columns=camera.columns,
            intrinsics=camera.intrinsics.tolist(),
            rotation=camera.rotation.tolist(),
            translation=camera.translation.tolist(),
            angle_deg=angle,
        )
        for i, (camera, angle) in enumerate(zip(views.cameras, angles, strict=True))
    ]
    return ViewsDocument(
        isocenter=tuple(float(v) for v in views.isocenter),
        c_arm=None if views.c_arm is None else CArmEntry(**asdict(views.c_arm)),
        volume=views.volume,
        views=entries,
    )


def check_views_output(folder: Path, overwrite: bool) -> None:
    """Refuse (one line) a views folder that exists (unless ``overwrite``) or whose parent does not."""
    if folder.exists() and not overwrite:
        raise UserInputError(f"{folder}: already exists; choose another name or pass --overwrite")
    if not folder.parent.is_dir():
        raise UserInputError(f"{folder}: folder {folder.parent} does not exist")


def write_views(folder: str | os.PathLike, views: ViewSet, overwrite: bool = False) -> Path:
    """Write ``views`` as ``folder``: built in a hidden sibling folder, then renamed into place,
    so the folder is complete or absent. An existing folder is replaced only with ``overwrite``."""
    folder = Path(folder)
    check_views_output(folder, overwrite)
    staging = _new_sibling(folder, "partial")
    try:
        for i, image in enumerate(views.images.detach().cpu().numpy().astype(np.float32)):
            sitk.WriteImage(sitk.GetImageFromArray(image), str(staging / _image_name(i)), useCompression=True)
        (staging / VIEWS_FILE).write_text(_document(views).model_dump_json(indent=1) + "\n", encoding="utf-8")
        if folder.exists():
            retired = _new_sibling(folder, "old")
            os.replace(folder, retired / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(retired)
        else:
            os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def _new_sibling(folder: Path, purpose: str) -> Path:
    """A new hidden folder next to ``folder`` (mkdir, so it gets the permissions the umask gives new folders)."""
    sibling = folder.parent / f".{folder.name}.{purpose}.{uuid.uuid4().hex[:12]}"
    sibling.mkdir()
    return sibling
