"""Reading CT volumes: every format keeps the geometry exactly; every bad input is one clear UserInputError."""

from __future__ import annotations

import gzip
import locale
import shutil
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from organdetr.errors import UserInputError
from organdetr_backend.image_io import ImageLimits, image_info, image_sha256, read_image
from organdetr_backend.nifti_file import checked_voxels

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def ct(small_abdomen_ct) -> sitk.Image:
    return sitk.ReadImage(str(small_abdomen_ct))


@pytest.fixture(scope="module")
def dicom_slab(data_dir) -> Path:
    return data_dir / "ts_example_dicom_2mm_slab"


def assert_same_image(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def expect_error(path: Path, *fragments: str, **kwargs) -> str:
    """Reading ``path`` fails with one line naming the file and containing ``fragments``."""
    with pytest.raises(UserInputError) as caught:
        read_image(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd", ".nii", ".nii.gz"])
def test_formats_round_trip_with_identical_geometry(ct, tmp_path, suffix):
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(ct, str(path))
    loaded = read_image(path)
    assert loaded.source == path.name
    assert loaded.image.GetPixelID() == sitk.sitkInt16
    assert_same_image(loaded.image, ct)
    assert image_sha256(loaded.image) == image_sha256(ct)


def test_pixel_types_are_normalised(ct, tmp_path):
    as_uint8 = tmp_path / "u8.nrrd"
    sitk.WriteImage(sitk.Cast(sitk.Clamp(ct, lowerBound=0, upperBound=255), sitk.sitkUInt8), str(as_uint8))
    assert read_image(as_uint8).image.GetPixelID() == sitk.sitkInt16
    as_double = tmp_path / "f64.mha"
    sitk.WriteImage(sitk.Cast(ct, sitk.sitkFloat64), str(as_double))
    loaded = read_image(as_double).image
    assert loaded.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(ct))


def test_image_info_and_hash(ct, tmp_path):
    path = tmp_path / "a.nrrd"
    sitk.WriteImage(ct, str(path))
    info = image_info(read_image(path))
    assert info.source == "a.nrrd" and info.coordinate_system == "LPS"
    assert info.shape == ct.GetSize() and info.spacing == ct.GetSpacing()
    np.testing.assert_allclose(info.origin, ct.GetOrigin())
    np.testing.assert_allclose(info.direction, ct.GetDirection())
    moved = sitk.Image(ct)
    moved.SetOrigin([v + 1.0 for v in ct.GetOrigin()])
    assert image_sha256(moved) != info.sha256  # geometry is part of the identity
    changed = sitk.Image(ct)
    changed[0, 0, 0] = int(changed[0, 0, 0]) + 1
    assert image_sha256(changed) != info.sha256


def _first_slice_header(folder: Path) -> sitk.ImageFileReader:
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    return reader


def test_dicom_series_folder(dicom_slab):
    loaded = read_image(dicom_slab)
    image = loaded.image
    assert image.GetSize() == (512, 512, 5)
    assert image.GetPixelID() == sitk.sitkInt16
    assert loaded.source == dicom_slab.name and loaded.note is None
    header = _first_slice_header(dicom_slab)
    position = [float(v) for v in header.GetMetaData("0020|0032").split("\\")]
    pixel_spacing = [float(v) for v in header.GetMetaData("0028|0030").split("\\")]
    np.testing.assert_allclose(image.GetOrigin(), position, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing()[:2], pixel_spacing[::-1], atol=1e-6)
    assert image.GetSpacing()[2] == pytest.approx(2.0, abs=1e-3)  # from slice positions, not SliceThickness (3)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6)
    assert -1100 < float(sitk.GetArrayViewFromImage(image).min()) < float(sitk.GetArrayViewFromImage(image).max())


def test_dicom_zip_gives_the_same_volume(dicom_slab, tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in sorted(dicom_slab.iterdir()):
            handle.write(file, f"patient/study/{file.name}")
    from_zip = read_image(archive)
    assert from_zip.source == "series.zip"
    assert image_sha256(from_zip.image) == image_sha256(read_image(dicom_slab).image)


def _write_series(folder: Path, modality: str, series_uid: str, slices: int, z0: float = 0.0) -> None:
    """A small real DICOM series written by SimpleITK (GDCM), one file per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    rng = np.random.default_rng(0)
    # GDCM's DICOM writer sets the process locale to "C" and never restores it: later tests must not inherit that.
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        for index in range(slices):
            plane = sitk.GetImageFromArray(rng.integers(-1000, 1000, size=(32, 32), dtype=np.int16))
            plane.SetSpacing((1.0, 1.0))
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            tags = {
                "0008|0016": sop_class,
                "0008|0018": f"{series_uid}.{index + 1}",
                "0008|0060": modality,
                "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": series_uid,
                "0020|0013": str(index + 1),
                "0020|0032": f"0\\0\\{z0 + 2.5 * index}",
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": "1\\1",
            }
            for tag, value in tags.items():
                plane.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"{modality}{series_uid[-3:]}_{index:03d}.dcm"))
            writer.Execute(plane)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def test_two_series_picks_the_larger_ct_and_says_so(dicom_slab, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(dicom_slab, folder)
    other_uid = "1.2.826.0.1.3680043.2.1125.2.777"
    _write_series(folder, "CT", other_uid, slices=3)
    loaded = read_image(folder)
    assert loaded.image.GetSize() == (512, 512, 5)
    assert loaded.note is not None and "2 DICOM series" in loaded.note and "5 slices" in loaded.note
    chosen = read_image(folder, series_uid=other_uid)
    assert chosen.image.GetSize() == (32, 32, 3) and chosen.series_uid == other_uid
    assert chosen.image.GetSpacing()[2] == pytest.approx(2.5)
    expect_error(folder, "no series with SeriesInstanceUID", series_uid="1.2.3.4")


@pytest.mark.parametrize("content", ["none", "a text file"])
def test_folder_without_dicom(tmp_path, capfd, content):
    folder = tmp_path / "empty_study"
    folder.mkdir()
    if content == "a text file":
        (folder / "readme.txt").write_text("no images here", encoding="utf-8")
    expect_error(folder, "no DICOM series")
    assert capfd.readouterr().err == ""  # ITK's own warning ("No Series were found") stays off the console


def test_dicom_file_limit(dicom_slab):
    expect_error(dicom_slab, "limit 3", limits=ImageLimits(max_dicom_files=3))


def test_wrong_modality(tmp_path):
    folder = tmp_path / "mr_series"
    _write_series(folder, "MR", "1.2.826.0.1.3680043.2.1125.3.1", slices=3)
    expect_error(folder, "wrong modality", "MR")


def test_zip_with_path_traversal_is_refused(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"  # the system temporary folder, where the archive is extracted
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("../outside.dcm", b"x")
    expect_error(archive, "outside the archive")
    assert list(scratch.iterdir()) == []  # nothing written next to the extraction folder, which is gone too


def test_messages_do_not_reveal_folders(tmp_path):
    folder = tmp_path / "private-upload-folder"
    folder.mkdir()
    path = folder / "text.nii.gz"
    path.write_bytes(b"not an image at all " * 50)
    assert "private-upload-folder" not in expect_error(path, "not a readable image")


def test_zip_size_limit_counts_inflated_bytes(tmp_path, dicom_slab):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for file in sorted(dicom_slab.iterdir()):
            handle.write(file, file.name)
    expect_error(archive, "expands to more than", limits=ImageLimits(max_zip_bytes=200_000))


def test_not_a_zip(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    expect_error(archive, "not a readable .zip")


def test_nonexistent_path(tmp_path):
    expect_error(tmp_path / "missing.nii.gz", "no such file")


def test_unknown_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello", encoding="utf-8")
    expect_error(path, "unknown format")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".nii"])
def test_garbage_bytes(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expect_error(path, "not a readable image")


def test_truncated_gzip(ct, tmp_path):
    full = tmp_path / "full.nii.gz"
    sitk.WriteImage(ct, str(full), useCompression=True)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    expect_error(truncated, "truncated or corrupt")


@pytest.mark.parametrize(("suffix", "compressed"), [(".nrrd", False), (".nrrd", True), (".mha", True), (".nii", False)])
def test_truncated_files(ct, tmp_path, suffix, compressed):
    full = tmp_path / f"full{suffix}"
    sitk.WriteImage(ct, str(full), useCompression=compressed)
    truncated = tmp_path / f"cut{suffix}"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    expect_error(truncated, "truncated or corrupt")


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image([64, 64], sitk.sitkInt16), str(path))
    expect_error(path, "2D image")


def test_single_slice_volume(tmp_path):
    path = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(sitk.Image([64, 64, 1], sitk.sitkInt16), str(path))
    expect_error(path, "single slice")


def test_4d_image(tmp_path):
    path = tmp_path / "series4d.nii.gz"
    sitk.WriteImage(sitk.Image([16, 16, 8, 3], sitk.sitkInt16), str(path))
    expect_error(path, "4D image")


def test_trivial_4d_image_is_squeezed(ct, tmp_path):
    image = sitk.JoinSeries([ct])  # 4D, fourth axis of size 1
    assert image.GetDimension() == 4
    path = tmp_path / "t1.nii.gz"
    sitk.WriteImage(image, str(path))
    assert_same_image(read_image(path).image, ct)


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(path))
    expect_error(path, "3 components")


def test_nan_voxels(ct, tmp_path):
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    array[5, 6, 7] = np.nan
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(image, str(path))
    expect_error(path, "NaN")


def _metaimage(path: Path, spacing: str, size: str = "4 4 4", data: bytes | None = None) -> Path:
    """A MetaImage written by hand, so that the header can say what ITK's writers refuse to write."""
    header = (
        f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementSpacing = {spacing}\n"
        "ElementType = MET_SHORT\nElementByteOrderMSB = False\nElementDataFile = LOCAL\n"
    )
    count = int(np.prod([int(v) for v in size.split()]))
    path.write_bytes(header.encode() + (data if data is not None else bytes(2 * count)))
    return path


@pytest.mark.parametrize(("spacing", "fragment"), [("0 1 1", "finite and positive"), ("1 -1 1", "finite and positive")])
def test_zero_and_negative_spacing(tmp_path, spacing, fragment):
    expect_error(_metaimage(tmp_path / "bad_spacing.mha", spacing), fragment)


def test_absurd_spacing(tmp_path):
    expect_error(_metaimage(tmp_path / "absurd.mha", "1e9 1 1"), "implausible")


def _nrrd(path: Path, directions: str, sizes: str = "4 4 4", data: bytes = bytes(128)) -> Path:
    """A NRRD written by hand (LPS space), so that the header can say what ITK's writers refuse to write."""
    header = (
        f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nspace: left-posterior-superior\n"
        f"space directions: {directions}\nencoding: raw\nendian: little\n\n"
    )
    path.write_bytes(header.encode() + data)
    return path


def test_zero_spacing_nrrd(tmp_path):
    expect_error(_nrrd(tmp_path / "zero.nrrd", "(0,0,0) (0,1,0) (0,0,1)"), "spacing")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_gigantic_header_is_refused_before_reading_pixels(tmp_path, suffix):
    """The header claims 10^15 voxels and there is no pixel data: refused from the header alone."""
    path = tmp_path / f"huge{suffix}"
    if suffix == ".mha":
        _metaimage(path, "1 1 1", size="100000 100000 100000", data=b"")
    else:
        _nrrd(path, "(1,0,0) (0,1,0) (0,0,1)", sizes="100000 100000 100000", data=b"")
    message = expect_error(path, "header claims")
    assert "1,000,000,000,000,000 voxels" in message


def test_non_orthonormal_direction(tmp_path):
    expect_error(_nrrd(tmp_path / "sheared.nrrd", "(1,0,0) (0.5,1,0) (0,0,1)"), "orthonormal")


def test_gzip_of_garbage_nifti(tmp_path):
    path = tmp_path / "wrapped.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    expect_error(path, "not a readable image")


def _tilted(image: sitk.Image) -> sitk.Image:
    """``image`` with an oblique, left-handed direction (LAS-like), so that geometry is no accident."""
    angle = np.deg2rad(20)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    out = sitk.Image(image)
    out.SetDirection(tuple((tilt @ np.diag([-1.0, 1.0, 1.0])).ravel()))
    return out


@pytest.mark.parametrize(
    ("pixel_type", "read_as"),
    [
        (sitk.sitkUInt8, sitk.sitkInt16),
        (sitk.sitkInt16, sitk.sitkInt16),
        (sitk.sitkUInt16, sitk.sitkFloat32),
        (sitk.sitkFloat32, sitk.sitkFloat32),
        (sitk.sitkFloat64, sitk.sitkFloat32),
    ],
)
@pytest.mark.parametrize("trivial_4d", [False, True])
def test_compressed_nifti_is_what_itk_reads(ct, tmp_path, pixel_type, read_as, trivial_4d):
    """A .nii.gz is inflated once, for the payload check, and its voxels used as they are: the same image as
    ITK's own read of the file."""
    values = sitk.Clamp(ct, lowerBound=0, upperBound=255) if pixel_type == sitk.sitkUInt8 else sitk.Abs(ct)
    image = _tilted(sitk.Cast(values, pixel_type))
    path = tmp_path / "volume.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([image]) if trivial_4d else image, str(path))
    itk = sitk.ReadImage(str(path))
    itk = sitk.Extract(itk, [*itk.GetSize()[:3], 0], [0, 0, 0, 0]) if itk.GetDimension() == 4 else itk
    loaded = read_image(path).image
    assert loaded.GetPixelID() == read_as
    assert loaded.GetSpacing() == itk.GetSpacing() and loaded.GetOrigin() == itk.GetOrigin()
    assert loaded.GetDirection() == itk.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(itk))


def test_big_endian_nifti_is_left_to_itk(ct, tmp_path):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "little.nii.gz"
    sitk.WriteImage(_tilted(ct), str(path))
    little = nib.load(str(path))
    header = little.header.as_byteswapped(">")
    big = tmp_path / "big.nii.gz"
    nib.Nifti1Image(np.asanyarray(little.dataobj).astype(">i2"), None, header=header).to_filename(str(big))
    assert_same_image(read_image(big).image, read_image(path).image)


def test_voxels_short_behind_a_large_header_are_refused(ct, tmp_path):
    """Voxel data that ends early is truncation even where the file still holds voxels + 348 bytes (a long header
    extension): ITK would zero-fill the rest."""
    path = tmp_path / "full.nii.gz"
    sitk.WriteImage(ct, str(path))
    data = bytearray(gzip.decompress(path.read_bytes()))
    offset = 352 + 4096
    data[108:112] = np.array([offset], dtype="<f4").tobytes()  # vox_offset
    data[352:352] = bytes(offset - 352)  # room for a header extension
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(bytes(data[:-1000])))
    expect_error(short, "truncated or corrupt")


def _scaled_nifti(path: Path, slope: float, inter: float, byte_order: str = "<") -> Path:
    """An int16 NIfTI-1 written by nibabel with intensity scaling in its header (scl_slope, scl_inter), as integer
    CTs are often stored, with an oblique voxel-to-world affine."""
    stored = np.random.default_rng(7).integers(0, 4096, (23, 19, 11)).astype(np.int16)
    angle = np.deg2rad(20)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = tilt @ np.diag([-0.8, 0.7, 2.5])
    affine[:3, 3] = [-120.5, 30.25, -400.0]
    header = nib.Nifti1Header(endianness=byte_order)
    header.set_data_dtype(np.int16)
    image = nib.Nifti1Image(stored.astype(np.dtype(np.int16).newbyteorder(byte_order)), affine, header=header)
    image.header.set_slope_inter(slope, inter)
    nib.save(image, str(path))
    written = nib.load(str(path))  # the file really stores int16 with this scaling
    assert written.get_data_dtype() == np.dtype(np.int16).newbyteorder(byte_order)
    assert (written.dataobj.slope, written.dataobj.inter) == (np.float32(slope), np.float32(inter))
    return path


@pytest.mark.parametrize(("slope", "inter", "exact"), [(1.0, -1024.0, True), (0.5, 0.0, True), (0.1, -1024.3, False)])
@pytest.mark.parametrize(
    ("suffix", "byte_order", "fast"), [(".nii.gz", "<", True), (".nii", "<", False), (".nii.gz", ">", False)]
)
def test_scaled_nifti_is_read_with_its_scaling(tmp_path, monkeypatch, slope, inter, exact, suffix, byte_order, fast):
    """An integer NIfTI with scl_slope/scl_inter holds 2 bytes a voxel although ITK reports float32: it is read, with
    value = stored * slope + inter, bit-equal to ITK's own read (and so to nibabel's float64 values rounded to
    float32, equal to them where those are exact), with ITK's geometry. A little-endian .nii.gz is inflated once
    (ITK's reader.Execute() is not called); the rest is read by ITK."""
    path = _scaled_nifti(tmp_path / f"scaled{suffix}", slope, inter, byte_order)
    expected = np.asarray(nib.load(str(path)).dataobj)
    itk = sitk.ReadImage(str(path))
    executed = []
    execute = sitk.ImageFileReader.Execute
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda reader: executed.append(1) or execute(reader))
    loaded = read_image(path).image
    monkeypatch.undo()
    assert bool(executed) != fast
    assert loaded.GetPixelID() == itk.GetPixelID() == sitk.sitkFloat32
    assert loaded.GetSize() == itk.GetSize() == expected.shape
    assert loaded.GetSpacing() == itk.GetSpacing() and loaded.GetOrigin() == itk.GetOrigin()
    assert loaded.GetDirection() == itk.GetDirection()
    voxels = sitk.GetArrayFromImage(loaded).transpose(2, 1, 0)  # numpy (k, j, i) to nibabel's (i, j, k)
    np.testing.assert_array_equal(voxels, sitk.GetArrayFromImage(itk).transpose(2, 1, 0))
    np.testing.assert_array_equal(voxels, expected.astype(np.float32))
    if exact:
        np.testing.assert_array_equal(voxels.astype(np.float64), expected)
    assert image_sha256(loaded) == image_sha256(itk)


@pytest.mark.parametrize(
    ("suffix", "byte_order", "cut", "fragment"),
    [
        (".nii.gz", "<", "gzip stream", "truncated or corrupt compressed data"),
        (".nii.gz", "<", "one voxel", "holds less data than its voxels need, truncated or corrupt"),
        (".nii.gz", ">", "one voxel", "holds less data than its voxels need, truncated or corrupt"),
        (".nii.gz", "<", "half the voxels", "holds less data than its voxels need, truncated or corrupt"),
        (".nii", "<", "one voxel", "file is shorter than its voxel data, truncated or corrupt"),
    ],
)
def test_truncated_scaled_nifti_is_refused(tmp_path, suffix, byte_order, cut, fragment):
    """The payload check counts the 2 bytes an int16 voxel is stored in, not the 4 of the float32 ITK reports for
    a scaled file: a scaled file that ends early, even by a single voxel, is refused with one line."""
    full = _scaled_nifti(tmp_path / f"full{suffix}", 1.0, -1024.0, byte_order).read_bytes()
    voxels = gzip.decompress(full) if suffix == ".nii.gz" else full
    if cut == "gzip stream":
        short = full[: len(full) // 2]
    else:
        end = len(voxels) - 2 if cut == "one voxel" else 352 + (len(voxels) - 352) // 2
        short = gzip.compress(voxels[:end]) if suffix == ".nii.gz" else voxels[:end]
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(short)
    expect_error(path, fragment)


@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_payload_is_sized_from_the_stored_datatype(tmp_path, image_class, byte_order, suffix):
    """The payload check sizes the voxel data from the header's datatype, in NIfTI-1 and NIfTI-2 (which this
    SimpleITK does not read: read_image refuses such a file as not a readable image before the check, so the check
    is called here directly) and either byte order, and finds the voxels at vox_offset: a scaled int16 file, which
    ITK reports as float32, is whole with 2 bytes a voxel from vox_offset on and refused one voxel short. Only a
    little-endian NIfTI-1 .nii.gz gives its voxels (scaled as ITK does); the rest is left to ITK."""
    shape = (23, 19, 11)
    stored = np.arange(np.prod(shape), dtype=np.int16).reshape(shape) % 4096
    header = image_class.header_class(endianness=byte_order)
    header.set_data_dtype(np.int16)
    image = image_class(stored.astype(np.dtype(np.int16).newbyteorder(byte_order)), None, header)
    image.header.set_slope_inter(0.5, -1024.0)
    path = tmp_path / f"scaled{suffix}"
    nib.save(image, str(path))
    assert nib.load(str(path)).dataobj.offset == (352 if image_class is nib.Nifti1Image else 544)
    voxels = checked_voxels(path, shape, np.dtype(np.float32))
    if image_class is nib.Nifti1Image and byte_order == "<" and suffix == ".nii.gz":
        np.testing.assert_array_equal(voxels.transpose(2, 1, 0), (stored * 0.5 - 1024).astype(np.float32))
    else:
        assert voxels is None
    data = gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes()
    short = tmp_path / f"short{suffix}"
    short.write_bytes(gzip.compress(data[:-2]) if suffix == ".nii.gz" else data[:-2])
    with pytest.raises(UserInputError, match="truncated or corrupt"):
        checked_voxels(short, shape, np.dtype(np.float32))
