"""Reading CT volumes for inference: NIfTI, NRRD, MetaImage, a DICOM series folder or a .zip of one.

Every reader validates the HEADER before pixels are read (3 dimensions, one scalar component, a voxel count under
:attr:`ImageLimits.max_voxels`, finite positive plausible spacing, orthonormal direction), so that a file claiming a
gigantic volume is refused before anything is allocated. Every failure the user can fix is a one-line
:class:`~organdetr.errors.UserInputError` naming the file. Geometry (origin, spacing, direction) is kept exactly as
SimpleITK reads it: physical coordinates are LPS millimetres.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from organdetr.errors import UserInputError

from .schema import ImageInfo

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
ZIP_SUFFIX = ".zip"
MODALITY_TAG = "0008|0060"
CT_MODALITY = "CT"
GZIP_SUFFIX = ".gz"
_CHUNK_BYTES = 1 << 20
_MAX_HEADER_BYTES = 1 << 20  # room for a header and extensions in front of the voxels of a compressed file
_NIFTI_HEADER_BYTES = 348  # NIfTI-1 (and Analyze 7.5)
_NIFTI2_HEADER_BYTES = 540
_NIFTI1_SINGLE_FILE_MAGIC = b"n+1\0"
_NIFTI2_SINGLE_FILE_MAGIC = b"n+2\0\r\n\x1a\n"
_NIFTI1_MIN_VOX_OFFSET = 352  # header and the 4-byte extension flag
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# NIfTI datatype codes (NIfTI-1 and NIfTI-2 share them) of the scalar types ITK reads as they are stored.
_NIFTI_DTYPES = {
    2: np.uint8,
    4: np.int16,
    8: np.int32,
    16: np.float32,
    64: np.float64,
    256: np.int8,
    512: np.uint16,
    768: np.uint32,
    1024: np.int64,
    1280: np.uint64,
}
# Stored types whose scaled voxels (scl_slope, scl_inter) the fast path computes exactly as ITK does: every value is
# exact in float32 and its product with a float32 slope (16 + 24 significant bits) exact in double.
_EXACTLY_SCALED_DTYPES = frozenset({np.int8, np.uint8, np.int16, np.uint16})
_SCALE_BLOCK = 1 << 20  # voxels scaled at a time (a float64 scratch block of 8 MiB)
# Integer pixel types that hold CT numbers exactly in int16; everything else is read as float32.
_INT16_COMPATIBLE = frozenset({sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16})
# Scalar pixel types a CT can come in, and their size in bytes.
_PIXEL_BYTES = {
    sitk.sitkInt8: 1,
    sitk.sitkUInt8: 1,
    sitk.sitkInt16: 2,
    sitk.sitkUInt16: 2,
    sitk.sitkInt32: 4,
    sitk.sitkUInt32: 4,
    sitk.sitkInt64: 8,
    sitk.sitkUInt64: 8,
    sitk.sitkFloat32: 4,
    sitk.sitkFloat64: 8,
}

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
    if pixel_id not in _PIXEL_BYTES:
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


@dataclass(frozen=True)
class _NiftiHeader:
    """The fields of a NIfTI-1 or NIfTI-2 header that say how and where the voxels are stored."""

    version: int  # 1 or 2
    little_endian: bool
    single_file: bool  # magic n+1 / n+2: the voxels follow the header in the same file
    dims: tuple[int, ...]  # dim[0] (the rank), dim[1..7]
    datatype: int
    bitpix: int
    vox_offset: float
    slope: float  # scl_slope
    intercept: float  # scl_inter

    @property
    def voxel_bytes(self) -> int | None:
        """Bytes per STORED voxel, from the datatype (as nifticlib sizes it) or else bitpix. ITK reports a scaled
        integer file as float32, so its pixel type does not say how much data the file holds."""
        dtype = _NIFTI_DTYPES.get(self.datatype)
        if dtype is not None:
            return np.dtype(dtype).itemsize
        if self.bitpix > 0 and self.bitpix % 8 == 0:
            return self.bitpix // 8
        return None

    @property
    def data_start(self) -> int:
        """Where the voxels start in a single file: vox_offset, never inside the header."""
        header_bytes = _NIFTI_HEADER_BYTES if self.version == 1 else _NIFTI2_HEADER_BYTES
        if self.single_file and math.isfinite(self.vox_offset) and self.vox_offset > header_bytes:
            return int(self.vox_offset)
        return header_bytes


def _parse_nifti_header(head: bytes) -> _NiftiHeader | None:
    """The header at the start of ``head`` (either byte order), or None if it is neither NIfTI-1 nor NIfTI-2."""
    if len(head) < _NIFTI_HEADER_BYTES:
        return None
    for order in "<>":
        (header_bytes,) = struct.unpack_from(order + "i", head, 0)
        if header_bytes == _NIFTI_HEADER_BYTES:
            vox_offset, slope, intercept = struct.unpack_from(order + "3f", head, 108)
            return _NiftiHeader(
                version=1,
                little_endian=order == "<",
                single_file=head[344:348] == _NIFTI1_SINGLE_FILE_MAGIC,
                dims=struct.unpack_from(order + "8h", head, 40),
                datatype=struct.unpack_from(order + "h", head, 70)[0],
                bitpix=struct.unpack_from(order + "h", head, 72)[0],
                vox_offset=vox_offset,
                slope=slope,
                intercept=intercept,
            )
        if header_bytes == _NIFTI2_HEADER_BYTES and len(head) >= _NIFTI2_HEADER_BYTES:
            slope, intercept = struct.unpack_from(order + "2d", head, 176)
            return _NiftiHeader(
                version=2,
                little_endian=order == "<",
                single_file=head[4:12] == _NIFTI2_SINGLE_FILE_MAGIC,
                dims=struct.unpack_from(order + "8q", head, 16),
                datatype=struct.unpack_from(order + "h", head, 12)[0],
                bitpix=struct.unpack_from(order + "h", head, 14)[0],
                vox_offset=float(struct.unpack_from(order + "q", head, 168)[0]),
                slope=slope,
                intercept=intercept,
            )
    return None


def _check_nifti_payload(
    path: Path, voxels: int, itk_pixel_bytes: int
) -> tuple[np.ndarray | None, _NiftiHeader | None]:
    """Make sure a NIfTI file holds all its voxels: ITK's NIfTI reader silently zero-fills a short file.

    The voxels need what the header's datatype stores (``itk_pixel_bytes`` only where the header cannot be parsed),
    from vox_offset on. A compressed file is inflated once to its end (which also verifies its checksum); its
    inflated bytes are returned, so that the voxels need not be inflated a second time (:func:`_nifti_voxels`),
    with its parsed header. None for the bytes of a plain file.
    """
    name = path.name
    if not name.lower().endswith(GZIP_SUFFIX):
        with open(path, "rb") as stream:
            header = _parse_nifti_header(stream.read(_NIFTI2_HEADER_BYTES))
        if path.stat().st_size < _nifti_data_end(header, voxels, itk_pixel_bytes):
            raise UserInputError(f"{name}: file is shorter than its voxel data, truncated or corrupt")
        return None, header
    try:
        with gzip.open(path, "rb") as stream:
            head = stream.read(_NIFTI2_HEADER_BYTES)
            header = _parse_nifti_header(head)
            data_end = _nifti_data_end(header, voxels, itk_pixel_bytes)
            # Anything beyond the voxels and a generous header is not the volume the header describes (a gzip bomb).
            limit = data_end - _data_start(header) + _MAX_HEADER_BYTES
            inflated_bytes = np.empty(limit, dtype=np.uint8)  # not initialised: pages are only touched as data arrives
            inflated_bytes[: len(head)] = np.frombuffer(head, dtype=np.uint8)
            inflated = len(head)
            while chunk := stream.read(_CHUNK_BYTES):
                end = inflated + len(chunk)
                if end > limit:
                    raise UserInputError(f"{name}: decompresses to more data than its header describes")
                inflated_bytes[inflated:end] = np.frombuffer(chunk, dtype=np.uint8)
                inflated = end
    except (EOFError, OSError, zlib.error) as error:
        raise UserInputError(f"{name}: truncated or corrupt compressed data ({error})") from None
    if inflated < data_end:
        raise UserInputError(f"{name}: holds less data than its voxels need, truncated or corrupt")
    return inflated_bytes[:inflated], header


def _data_start(header: _NiftiHeader | None) -> int:
    return _NIFTI_HEADER_BYTES if header is None else header.data_start


def _nifti_data_end(header: _NiftiHeader | None, voxels: int, itk_pixel_bytes: int) -> int:
    """The least file (or inflated) size that holds ``voxels`` stored voxels after the header."""
    voxel_bytes = None if header is None else header.voxel_bytes
    return _data_start(header) + voxels * (itk_pixel_bytes if voxel_bytes is None else voxel_bytes)


def _itk_rescales(slope: float, intercept: float) -> bool | None:
    """Whether ITK's NIfTI reader applies ``stored * slope + intercept``: False for no scaling (slope 0 or 1,
    intercept 0), True for a finite slope clearly not 0 or 1 or a finite intercept clearly not 0, None in between
    (a slope of 0 with an intercept, a non-finite or vanishing field), which is left to ITK."""
    epsilon = sys.float_info.epsilon
    if slope in (0.0, 1.0) and intercept == 0.0:
        return False
    if (
        math.isfinite(slope)
        and math.isfinite(intercept)
        and abs(slope) > epsilon
        and (abs(slope - 1.0) > epsilon or abs(intercept) > epsilon)
    ):
        return True
    return None


def _scaled(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``stored * slope + intercept`` as ITK's NIfTI reader computes it: in double precision, rounded to float32.

    Bit-exact for the :data:`_EXACTLY_SCALED_DTYPES` and a NIfTI-1 (float32) slope: the product is exact in double,
    so the sum is the one rounding however ITK's loop was compiled (fused multiply-add or not). In blocks, so that
    no float64 copy of the volume is made.
    """
    out = np.empty(stored.shape, dtype=np.float32)
    scratch = np.empty(min(stored.size, _SCALE_BLOCK), dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond float32's range is inf, as in ITK (and then refused as infinite)
        for begin in range(0, stored.size, _SCALE_BLOCK):
            block = stored[begin : begin + _SCALE_BLOCK]
            product = scratch[: block.size]
            np.multiply(block, np.float64(slope), out=product)
            product += intercept
            out[begin : begin + block.size] = product
    return out


def _nifti_voxels(
    name: str, inflated: np.ndarray, header: _NiftiHeader | None, reader: sitk.ImageFileReader, size: tuple[int, ...]
) -> np.ndarray | None:
    """The voxels of an inflated single-file NIfTI-1 (numpy order (k, j, i)) where they are stored just as ITK's
    reader would return them: little-endian, the pixel type ITK reports, no intensity scaling (``scl_slope`` 0 or
    1, ``scl_inter`` 0); a view of ``inflated``. Also where ITK would scale them and the fast path does so exactly
    (:func:`_scaled`): 8 or 16-bit integers that ITK reports as float32; a new float32 array. None for anything
    else: ITK then reads the file itself."""
    if sys.byteorder != "little" or header is None:
        return None
    dtype = _NIFTI_DTYPES.get(header.datatype)
    rank = header.dims[0]
    vox_offset = header.vox_offset
    if (
        header.version != 1
        or not header.little_endian
        or not header.single_file
        or dtype is None
        or not 1 <= rank <= 7
        or not _same_extent(header.dims[1 : rank + 1], reader.GetSize())
        or not math.isfinite(vox_offset)
        or vox_offset != int(vox_offset)
        or not _NIFTI1_MIN_VOX_OFFSET <= vox_offset <= _MAX_HEADER_BYTES
    ):
        return None
    rescales = _itk_rescales(header.slope, header.intercept)
    if rescales is None:
        return None
    if rescales:
        if dtype not in _EXACTLY_SCALED_DTYPES or reader.GetPixelID() != sitk.sitkFloat32:
            return None
    elif dtype != _NUMPY_DTYPES.get(reader.GetPixelID()):
        return None
    start = int(vox_offset)
    stop = start + int(np.prod(size)) * np.dtype(dtype).itemsize
    if stop > inflated.size:
        raise UserInputError(f"{name}: holds less data than its voxels need, truncated or corrupt")
    stored = inflated[start:stop].view(dtype)
    voxels = _scaled(stored, header.slope, header.intercept) if rescales else stored
    return voxels.reshape(tuple(reversed(size)))


def _same_extent(header_dims: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether a NIfTI header's dimensions describe ITK's image size (ITK drops trailing axes of size 1)."""
    return (
        len(header_dims) >= len(size)
        and tuple(header_dims[: len(size)]) == tuple(size)
        and all(d == 1 for d in header_dims[len(size) :])
    )


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
        inflated, header = _check_nifti_payload(path, int(np.prod(size)), _PIXEL_BYTES[reader.GetPixelID()])
        if inflated is not None:
            voxels = _nifti_voxels(name, inflated, header, reader, size)
    if voxels is not None:
        # The voxels inflated for the payload check, with the geometry ITK read from the header: the file is
        # decompressed once, not twice.
        image = sitk.GetImageFromArray(voxels)
        del voxels, inflated
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
