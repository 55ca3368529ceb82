"""Reading CT volumes for inference: NIfTI, NRRD, MetaImage, a DICOM series folder or a .zip of one.

Every reader validates the HEADER before pixels are read (3 dimensions, one scalar component, a voxel count under
:attr:`ImageLimits.max_voxels`, finite positive plausible spacing, orthonormal direction), so that a file claiming a
gigantic volume is refused before anything is allocated. Every failure the user can fix is a one-line
:class:`~organdetr.errors.UserInputError` naming the file. Geometry (origin, spacing, direction) is kept exactly as
SimpleITK reads it: physical coordinates are LPS millimetres.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from organdetr.errors import UserInputError

from .nifti_file import NIFTI_SUFFIXES, checked_voxels
from .schema import ImageInfo

IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd")
ZIP_SUFFIX = ".zip"
MODALITY_TAG = "0008|0060"
CT_MODALITY = "CT"
# Integer pixel types that hold CT numbers exactly in int16; everything else is read as float32.
_INT16_COMPATIBLE = frozenset({sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16})
# Scalar pixel types a CT can come in, as numpy types.
_NUMPY_DTYPES = {
    sitk.sitkInt8: np.int8,
    sitk.sitkUInt8: np.uint8,
    sitk.sitkInt16: np.int16,
    sitk.sitkUInt16: np.uint16,
    sitk.sitkInt32: np.int32,
    sitk.sitkUInt32: np.uint32,
    sitk.sitkInt64: np.int64,
    sitk.sitkUInt64: np.uint64,
    sitk.sitkFloat32: np.float32,
    sitk.sitkFloat64: np.float64,
}


@dataclass(frozen=True)
class ImageLimits:
    """Plausibility limits applied to every input before its pixels are read."""

    max_voxels: int = 1024 * 1024 * 2048
    max_spacing_mm: float = 100.0
    min_axis_voxels: int = 2  # a single slice is a 2D image, not a volume
    orthonormal_tolerance: float = 1e-3
    max_zip_bytes: int = 4 * 1024**3  # total uncompressed size of a DICOM .zip
    max_zip_members: int = 20_000
    max_dicom_files: int = 20_000


@dataclass
class LoadedImage:
    """A validated 3D CT volume and where it came from."""

    image: sitk.Image  # 3D, int16 or float32, LPS geometry as read
    source: str  # file or folder name (no directories), shown to the user and stored in results
    series_uid: str | None = None  # DICOM SeriesInstanceUID when read from DICOM
    note: str | None = None  # something the user should know (e.g. which of several DICOM series was chosen)


def _first_line(error: BaseException, folder: Path) -> str:
    """The informative line of an ITK exception (ITK puts the message after a file:line prefix), with file names
    relative to ``folder``: messages must not reveal where files lie (a server's private upload folder)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[-1] if lines else type(error).__name__
    for line in lines:
        marker = next((m for m in ("sitk::ERROR:", "ITK ERROR:", "ERROR:") if m in line), None)
        if marker is not None:
            message = line.split(marker, 1)[1].strip()
            break
    for prefix in dict.fromkeys((str(folder), str(folder.resolve()))):
        message = message.replace(prefix + os.sep, "")
    return message


@contextmanager
def _itk_warnings_hidden() -> Iterator[None]:
    """Keep ITK from printing warnings straight to the console (e.g. "No Series were found" for a folder without
    DICOM), where they would precede our own one-line message."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _validate_geometry(
    name: str,
    dimension: int,
    size: tuple[int, ...],
    components: int,
    pixel_id: int,
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: tuple[float, ...],
    limits: ImageLimits,
) -> None:
    """Refuse implausible geometry (from a header or an image) with a one-line message."""
    if components != 1:
        raise UserInputError(f"{name}: has {components} components per voxel; a CT volume has one scalar value")
    if pixel_id not in _NUMPY_DTYPES:
        raise UserInputError(f"{name}: unsupported pixel type {sitk.GetPixelIDValueAsString(pixel_id)}")
    if dimension != 3:
        raise UserInputError(f"{name}: is a {dimension}D image of size {list(size)}; a 3D CT volume is needed")
    if min(size) < limits.min_axis_voxels:
        raise UserInputError(f"{name}: size {list(size)} is a single slice; a 3D CT volume is needed")
    voxels = int(np.prod(np.array(size, dtype=np.float64)))
    if voxels > limits.max_voxels:
        raise UserInputError(
            f"{name}: header claims {list(size)} = {voxels:,} voxels, more than the limit of {limits.max_voxels:,}"
        )
    spacing_array = np.array(spacing, dtype=np.float64)
    if not np.all(np.isfinite(spacing_array)) or np.any(spacing_array <= 0):
        raise UserInputError(f"{name}: voxel spacing {list(spacing)} must be finite and positive")
    if np.any(spacing_array > limits.max_spacing_mm):
        raise UserInputError(
            f"{name}: voxel spacing {list(spacing)} mm is implausible (limit {limits.max_spacing_mm} mm)"
        )
    if not np.all(np.isfinite(np.array(origin, dtype=np.float64))):
        raise UserInputError(f"{name}: origin {list(origin)} is not finite")
    matrix = np.array(direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or not np.allclose(
        matrix @ matrix.T, np.eye(3), atol=limits.orthonormal_tolerance
    ):
        raise UserInputError(f"{name}: direction matrix {list(direction)} is not orthonormal")


def _validate_image(name: str, image: sitk.Image, limits: ImageLimits) -> None:
    _validate_geometry(
        name,
        image.GetDimension(),
        image.GetSize(),
        image.GetNumberOfComponentsPerPixel(),
        image.GetPixelID(),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
        limits,
    )


def _squeeze_trivial_4d(reader: sitk.ImageFileReader) -> bool:
    """Whether a 4D header is really 3D (fourth axis of size 1, not mixed into the spatial axes)."""
    if reader.GetDimension() != 4 or reader.GetSize()[3] != 1:
        return False
    direction = np.array(reader.GetDirection(), dtype=np.float64).reshape(4, 4)
    return bool(np.allclose(direction[3, :3], 0) and np.allclose(direction[:3, 3], 0))


def _to_ct_pixel_type(name: str, image: sitk.Image) -> sitk.Image:
    """int16 when that holds the values exactly, float32 otherwise; refuses NaN or infinite voxels."""
    if image.GetPixelID() in _INT16_COMPATIBLE:
        return sitk.Cast(image, sitk.sitkInt16) if image.GetPixelID() != sitk.sitkInt16 else image
    image = sitk.Cast(image, sitk.sitkFloat32) if image.GetPixelID() != sitk.sitkFloat32 else image
    if not np.all(np.isfinite(sitk.GetArrayViewFromImage(image))):
        raise UserInputError(f"{name}: contains NaN or infinite voxel values")
    return image


def _read_image_file(path: Path, limits: ImageLimits) -> LoadedImage:
    name = path.name
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UserInputError(f"{name}: not a readable image ({_first_line(error, path.parent)})") from None
    squeeze = _squeeze_trivial_4d(reader)
    dimension = 3 if squeeze else reader.GetDimension()
    size, spacing, origin = reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()
    direction = reader.GetDirection()
    if squeeze:
        size, spacing, origin = size[:3], spacing[:3], origin[:3]
        direction = tuple(np.array(direction).reshape(4, 4)[:3, :3].ravel())
    _validate_geometry(
        name,
        dimension,
        size,
        reader.GetNumberOfComponents(),
        reader.GetPixelID(),
        spacing,
        origin,
        direction,
        limits,
    )
    voxels = None
    if _suffix(path) in NIFTI_SUFFIXES:
        voxels = checked_voxels(path, size, np.dtype(_NUMPY_DTYPES[reader.GetPixelID()]))
    if voxels is not None:
        # The voxels inflated for the payload check, with the geometry ITK read from the header: the file is
        # decompressed once, not twice.
        image = sitk.GetImageFromArray(voxels)
        del voxels  # and the inflated file it may view: the image holds a copy
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        if not squeeze:  # what reader.Execute() carries (sitk.Extract drops it)
            for key in reader.GetMetaDataKeys():
                image.SetMetaData(key, reader.GetMetaData(key))
    else:
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise UserInputError(
                f"{name}: cannot read the voxel data, truncated or corrupt? ({_first_line(error, path.parent)})"
            ) from None
        if squeeze:
            image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    _validate_image(name, image, limits)
    return LoadedImage(image=_to_ct_pixel_type(name, image), source=name)


def _tag(file_name: str, tag: str) -> str | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_name)
    reader.LoadPrivateTagsOff()
    reader.ReadImageInformation()
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else None


@dataclass
class _Series:
    uid: str
    files: tuple[str, ...]
    modality: str | None


def _find_series(folder: Path, name: str, limits: ImageLimits) -> list[_Series]:
    """Every DICOM series in ``folder`` and its sub-folders."""
    series: list[_Series] = []
    directories = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink())]
    for directory in directories:
        with _itk_warnings_hidden():
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
        for uid in uids:
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
            if len(files) > limits.max_dicom_files:
                raise UserInputError(f"{name}: series {uid} has {len(files)} files (limit {limits.max_dicom_files})")
            try:
                modality = _tag(files[0], MODALITY_TAG)
            except RuntimeError:
                continue
            series.append(_Series(uid=uid, files=files, modality=modality))
    return series


def _choose_series(name: str, series: list[_Series], series_uid: str | None) -> tuple[_Series, str | None]:
    """The requested series, or the CT series with the most slices (and a note saying so)."""
    if not series:
        raise UserInputError(f"{name}: no DICOM series found")
    if series_uid is not None:
        chosen = [s for s in series if s.uid == series_uid]
        if not chosen:
            raise UserInputError(
                f"{name}: no series with SeriesInstanceUID {series_uid}; found {', '.join(s.uid for s in series)}"
            )
        selected = chosen[0]
        if selected.modality not in (None, CT_MODALITY):
            raise UserInputError(f"{name}: wrong modality {selected.modality} for series {series_uid}; CT is needed")
        return selected, None
    ct_series = [s for s in series if s.modality in (None, CT_MODALITY)]
    if not ct_series:
        found = ", ".join(sorted({str(s.modality) for s in series}))
        raise UserInputError(f"{name}: wrong modality ({found}); the detector needs a CT series")
    selected = max(ct_series, key=lambda s: len(s.files))
    if len(series) == 1:
        return selected, None
    note = (
        f"{len(series)} DICOM series in {name}; using the CT series with the most slices "
        f"({len(selected.files)} slices, SeriesInstanceUID {selected.uid}); choose another by its SeriesInstanceUID"
    )
    return selected, note


def _read_dicom_folder(folder: Path, name: str, series_uid: str | None, limits: ImageLimits) -> LoadedImage:
    selected, note = _choose_series(name, _find_series(folder, name, limits), series_uid)
    try:
        first = sitk.ImageFileReader()
        first.SetFileName(selected.files[0])
        first.ReadImageInformation()
    except RuntimeError as error:
        raise UserInputError(f"{name}: cannot read DICOM header ({_first_line(error, folder)})") from None
    columns, rows = first.GetSize()[:2]
    size = (columns, rows, len(selected.files))
    voxels = int(np.prod(np.array(size, dtype=np.float64)))
    if voxels > limits.max_voxels:
        raise UserInputError(f"{name}: series of size {list(size)} has more than {limits.max_voxels:,} voxels")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(selected.files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise UserInputError(f"{name}: cannot read the DICOM series ({_first_line(error, folder)})") from None
    _validate_image(name, image, limits)
    return LoadedImage(image=_to_ct_pixel_type(name, image), source=name, series_uid=selected.uid or None, note=note)


@contextmanager
def _extracted_zip(path: Path, limits: ImageLimits) -> Iterator[Path]:
    """Extract a .zip into a temporary folder, refusing path traversal, links and oversized content."""
    name = path.name
    with tempfile.TemporaryDirectory(prefix="organdetr-zip-") as temp:
        root = Path(temp).resolve()
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
                if len(members) > limits.max_zip_members:
                    raise UserInputError(f"{name}: {len(members)} entries, more than {limits.max_zip_members}")
                written = 0
                for member in members:
                    target = (root / member.filename).resolve()
                    if not target.is_relative_to(root) or os.path.isabs(member.filename):
                        raise UserInputError(f"{name}: entry {member.filename!r} points outside the archive")
                    if stat.S_ISLNK(member.external_attr >> 16):
                        raise UserInputError(f"{name}: entry {member.filename!r} is a symbolic link")
                    if member.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # Count the bytes actually inflated: the sizes in the directory may lie (zip bombs).
                    with archive.open(member) as source, open(target, "wb") as destination:
                        while chunk := source.read(1 << 20):
                            written += len(chunk)
                            if written > limits.max_zip_bytes:
                                raise UserInputError(f"{name}: expands to more than {limits.max_zip_bytes:,} bytes")
                            destination.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as error:
            raise UserInputError(f"{name}: not a readable .zip archive ({error})") from None
        yield root


def read_image(
    path: str | os.PathLike, series_uid: str | None = None, limits: ImageLimits = ImageLimits()
) -> LoadedImage:
    """Read and validate one CT volume: an image file, a DICOM series folder or a .zip holding one.

    Raises :class:`UserInputError` (one line naming the file) for anything the user can fix.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path.name or path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_folder(path, path.name, series_uid, limits)
    suffix = _suffix(path)
    if suffix == ZIP_SUFFIX:
        with _extracted_zip(path, limits) as folder:
            return _read_dicom_folder(folder, path.name, series_uid, limits)
    if suffix not in IMAGE_SUFFIXES:
        supported = ", ".join((*IMAGE_SUFFIXES, ZIP_SUFFIX))
        raise UserInputError(f"{path.name}: unknown format; expected {supported} or a DICOM folder")
    if series_uid is not None:
        raise UserInputError(f"{path.name}: a SeriesInstanceUID only applies to DICOM input")
    return _read_image_file(path, limits)


def image_sha256(image: sitk.Image) -> str:
    """SHA-256 of the voxel bytes, pixel type and geometry: equal for the same volume in any file format."""
    digest = hashlib.sha256()
    digest.update(image.GetPixelIDTypeAsString().encode())
    for values in (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        digest.update(np.asarray(values, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)))  # the buffer itself, no copy
    return digest.hexdigest()


def image_info(loaded: LoadedImage) -> ImageInfo:
    """The result schema's description of the input image."""
    image = loaded.image
    return ImageInfo(
        source=loaded.source,
        shape=tuple(int(v) for v in image.GetSize()),
        spacing=tuple(float(v) for v in image.GetSpacing()),
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=[float(v) for v in image.GetDirection()],
        sha256=image_sha256(image),
    )
