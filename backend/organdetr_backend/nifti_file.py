"""NIfTI files (.nii, .nii.gz): the voxel-data check ITK's reader lacks, and a .nii.gz inflated only once.

ITK's NIfTI reader silently zero-fills voxels that a file does not hold, so :func:`checked_voxels` refuses a file
shorter than its header says. That check inflates a .nii.gz to its end; where the inflated voxels are, bit for bit,
what ITK's reader would return, they are returned, so that ITK need not inflate the file a second time. Headers are
read with nibabel; the geometry is always ITK's.
"""

from __future__ import annotations

import gzip
import math
import sys
import zlib
from pathlib import Path

import nibabel
import numpy as np
from organdetr.errors import UserInputError

try:  # ISA-L's inflate: twice zlib's speed (0.22 vs 0.46 s for the 35 MB chest CT); zlib where it is not installed
    from isal import igzip as gzip_files
    from isal.isal_zlib import error as InflateError
except ImportError:
    gzip_files, InflateError = gzip, zlib.error

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_HEADER_CLASSES = (nibabel.Nifti1Header, nibabel.Nifti2Header)
_CHUNK_BYTES = 1 << 20
_MAX_HEADER_BYTES = 1 << 20  # room for a header and extensions in front of the voxels of a compressed file
# Stored types whose scaled voxels (scl_slope, scl_inter) are computed here exactly as ITK does: every value is exact
# in float32 and its product with a float32 slope (16 + 24 significant bits) exact in double.
_EXACTLY_SCALED_DTYPES = frozenset(map(np.dtype, (np.int8, np.uint8, np.int16, np.uint16)))
_SCALE_BLOCK = 1 << 20  # voxels scaled at a time (a float64 scratch block of 8 MiB)


def checked_voxels(path: Path, size: tuple[int, ...], itk_dtype: np.dtype) -> np.ndarray | None:
    """Refuse a .nii or .nii.gz file that holds fewer voxels than its header describes; return the voxels of a .nii.gz
    where its inflated bytes give them exactly as ITK's reader would, else None (ITK is to read the file).

    ``size`` is the image size ITK reports, ``itk_dtype`` the numpy type of its pixel type. The voxels come in numpy
    order (k, j, i). Raises :class:`UserInputError`, one line naming the file.
    """
    voxel_count = math.prod(size)
    if not path.name.lower().endswith(".gz"):
        with open(path, "rb") as stream:
            header = _read_header(stream.read(nibabel.Nifti2Header.sizeof_hdr))
        if path.stat().st_size < _voxel_span(header, voxel_count, itk_dtype)[1]:
            raise UserInputError(f"{path.name}: file is shorter than its voxel data, truncated or corrupt")
        return None
    header, stored = _read_compressed(path, voxel_count, itk_dtype)
    return _voxels_as_itk_reads_them(header, stored, size, itk_dtype)


def _read_header(head: bytes) -> nibabel.Nifti1Header | None:
    """The NIfTI-1 or NIfTI-2 header at the start of ``head``, in the byte order its sizeof_hdr is written in; None if
    it is neither. Read as it is (``check=False``): nibabel would otherwise repair fields that ITK reads unrepaired."""
    for header_class in _HEADER_CLASSES:
        block = head[: header_class.sizeof_hdr]
        if len(block) < header_class.sizeof_hdr:
            continue
        for endianness in "<>":
            header = header_class(block, endianness=endianness, check=False)
            if header["sizeof_hdr"] == header_class.sizeof_hdr:
                return header
    return None


def _voxel_span(header: nibabel.Nifti1Header | None, voxel_count: int, itk_dtype: np.dtype) -> tuple[int, int]:
    """Where the stored voxels start and end in the (inflated) file.

    They start at vox_offset in a single file (magic n+1 or n+2), never inside the header. Their size is that of the
    STORED datatype: ITK reports a scaled integer file as float32, so its pixel type sizes them only where the header
    cannot be read.
    """
    if header is None:
        start, voxel_bytes = nibabel.Nifti1Header.sizeof_hdr, None
    else:
        vox_offset = float(header["vox_offset"])
        single_file = header["magic"] == header.single_magic
        past_header = math.isfinite(vox_offset) and vox_offset > header.sizeof_hdr
        start = int(vox_offset) if single_file and past_header else header.sizeof_hdr
        voxel_bytes = _stored_voxel_bytes(header)
    return start, start + voxel_count * (voxel_bytes or itk_dtype.itemsize)


def _stored_voxel_bytes(header: nibabel.Nifti1Header) -> int | None:
    """Bytes per stored voxel, from the datatype (as nifticlib sizes it) or else bitpix; None if neither tells."""
    dtype = _stored_dtype(header)
    if dtype is not None and dtype.itemsize:  # nibabel's "none" and "binary" types have no size
        return dtype.itemsize
    bitpix = int(header["bitpix"])
    return bitpix // 8 if bitpix > 0 and bitpix % 8 == 0 else None


def _stored_dtype(header: nibabel.Nifti1Header) -> np.dtype | None:
    """The numpy type of the stored voxels, in the header's byte order; None for a datatype nibabel does not know."""
    try:
        return header.get_data_dtype()
    except KeyError:
        return None


def _read_compressed(
    path: Path, voxel_count: int, itk_dtype: np.dtype
) -> tuple[nibabel.Nifti1Header | None, np.ndarray]:
    """The header of a .nii.gz and its stored voxel bytes, a view of the whole file inflated to its end (which also
    verifies its checksum)."""
    name = path.name
    try:
        with gzip_files.open(path, "rb") as stream:
            head = stream.read(nibabel.Nifti2Header.sizeof_hdr)
            header = _read_header(head)
            start, end = _voxel_span(header, voxel_count, itk_dtype)
            # Anything beyond the voxels and a generous header is not the volume the header describes (a gzip bomb).
            limit = end - start + _MAX_HEADER_BYTES
            inflated = np.empty(limit, dtype=np.uint8)  # not initialised: pages are only touched as data arrives
            inflated[: len(head)] = np.frombuffer(head, dtype=np.uint8)
            inflated_size = len(head)
            while chunk := stream.read(_CHUNK_BYTES):
                chunk_end = inflated_size + len(chunk)
                if chunk_end > limit:
                    raise UserInputError(f"{name}: decompresses to more data than its header describes")
                inflated[inflated_size:chunk_end] = np.frombuffer(chunk, dtype=np.uint8)
                inflated_size = chunk_end
    except (EOFError, OSError, zlib.error, InflateError) as error:
        raise UserInputError(f"{name}: truncated or corrupt compressed data ({error})") from None
    if inflated_size < end:
        raise UserInputError(f"{name}: holds less data than its voxels need, truncated or corrupt")
    return header, inflated[start:end]


def _voxels_as_itk_reads_them(
    header: nibabel.Nifti1Header | None, stored: np.ndarray, size: tuple[int, ...], itk_dtype: np.dtype
) -> np.ndarray | None:
    """The ``stored`` voxel bytes of a single-file NIfTI-1 as voxels where they are bit for bit what ITK's reader would
    return: little-endian, in ITK's pixel type and without intensity scaling (a view of ``stored``), or 8 or 16-bit
    integers that ITK scales to float32 (a new array, :func:`_scaled`). None for anything else, which ITK reads."""
    if header is None or isinstance(header, nibabel.Nifti2Header):
        return None
    dtype = _stored_dtype(header)
    vox_offset = float(header["vox_offset"])
    if (
        dtype is None
        or sys.byteorder != "little"
        or header.endianness != "<"
        or header["magic"] != header.single_magic
        or not 1 <= header["dim"][0] <= 7  # else ITK read the other byte order (nifticlib goes by dim[0])
        or not _same_extent(header.get_data_shape(), size)
        # voxels exactly at vox_offset, past the header and its extension flag; any other offset is left to ITK
        or not vox_offset.is_integer()
        or vox_offset < nibabel.Nifti1Header.single_vox_offset
    ):
        return None
    slope, intercept = float(header["scl_slope"]), float(header["scl_inter"])
    rescales = _itk_rescales(slope, intercept)
    if rescales is None:
        return None
    if rescales:
        if dtype not in _EXACTLY_SCALED_DTYPES or itk_dtype != np.float32:
            return None
    elif dtype != itk_dtype:
        return None
    voxels = stored.view(dtype)
    if rescales:
        voxels = _scaled(voxels, slope, intercept)
    return voxels.reshape(tuple(reversed(size)))


def _same_extent(header_shape: tuple[int, ...], size: tuple[int, ...]) -> bool:
    """Whether a NIfTI header's shape describes ITK's image size (ITK drops trailing axes of size 1)."""
    return (
        len(header_shape) >= len(size)
        and tuple(header_shape[: len(size)]) == tuple(size)
        and all(d == 1 for d in header_shape[len(size) :])
    )


def _itk_rescales(slope: float, intercept: float) -> bool | None:
    """Whether ITK's NIfTI reader applies ``stored * slope + intercept``: False for no scaling (slope 0 or 1,
    intercept 0), True for a finite slope clearly not 0 or 1 or a finite intercept clearly not 0, None in between
    (a slope of 0 with an intercept, a non-finite or vanishing field), which is left to ITK.

    From the raw header fields, not nibabel's ``get_slope_inter()``: that returns (None, None) both for no scaling and
    for a slope of 0 with an intercept or a non-finite slope, where ITK and nibabel disagree.
    """
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
    so the sum is the one rounding however ITK's loop was compiled (fused multiply-add or not). In blocks, so that no
    float64 copy of the volume is made.
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
