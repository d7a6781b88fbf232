"""Series loading: geometry and pixels round-trip from phantom files, compressed transfer
syntaxes load, and every kind of unusable input raises its named error."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from pipeline import errors
from pipeline.series import load_series
from tests.dicom_tools import run_tool


def _positions(paths: list[Path]) -> np.ndarray:
    return np.array([pydicom.dcmread(p).ImagePositionPatient for p in paths], dtype=float)


def test_classic_round_trip_geometry_and_pixels(psir_classic) -> None:
    vol = load_series(psir_classic.out_dir / "dicom")
    g, written = vol.geometry, psir_classic.geometry
    assert g.shape == written.shape
    written_positions = _positions(psir_classic.files)
    for k in range(g.shape[0]):
        np.testing.assert_allclose(g.slice_position(k), written_positions[k], atol=1e-4)
    np.testing.assert_allclose(g.row_direction, written.row_direction, atol=1e-6)
    np.testing.assert_allclose(g.column_direction, written.column_direction, atol=1e-6)
    assert g.pixel_spacing == pytest.approx(written.pixel_spacing, abs=1e-5)
    # Spacing from positions = thickness + gap, not SliceThickness.
    assert g.slice_spacing == pytest.approx(written.slice_spacing, abs=1e-4)
    acq = psir_classic.acquisition
    if acq.gap > 0.01:
        assert g.slice_spacing != pytest.approx(g.slice_thickness, abs=1e-3)
    np.testing.assert_array_equal(vol.array, psir_classic.image)
    assert vol.array.dtype == np.float32
    assert vol.array.min() < 0, "PSIR rescale (negative intercept) was applied"
    # datasets[k] is slice k
    assert [d.SOPInstanceUID for d in vol.datasets] == [f.sop_instance_uid for f in vol.frames]


def test_file_order_does_not_matter(psir_classic) -> None:
    files = list(psir_classic.files)
    rng = np.random.default_rng(1)
    rng.shuffle(files)
    vol = load_series(files)
    np.testing.assert_array_equal(vol.array, psir_classic.image)


def test_enhanced_round_trip(magnitude_enhanced) -> None:
    vol = load_series(magnitude_enhanced.files[0])
    assert vol.is_multiframe and len(vol.datasets) == 1
    assert [f.frame_number for f in vol.frames] == list(range(1, vol.geometry.shape[0] + 1))
    ds = vol.datasets[0]
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(vol.geometry.slice_position(k), ipp, atol=1e-4)
    np.testing.assert_array_equal(vol.array, magnitude_enhanced.image)
    assert vol.geometry.slice_spacing == pytest.approx(
        magnitude_enhanced.geometry.slice_spacing, abs=1e-4
    )


@pytest.mark.parametrize("codec", ["jpeg-lossless", "rle", "jpeg2000"])
def test_compressed_copy_loads_with_same_pixels(psir_classic, tmp_path: Path, codec: str) -> None:
    for src in psir_classic.files:
        dst = tmp_path / src.name
        if codec == "jpeg-lossless":
            run_tool("dcmcjpeg", "+e1", str(src), str(dst))  # DCMTK, Process 14 SV1
        elif codec == "rle":
            run_tool("dcmcrle", str(src), str(dst))  # DCMTK RLE Lossless
        else:
            ds = pydicom.dcmread(src)
            ds.compress(JPEG2000Lossless)  # openjpeg through pylibjpeg
            ds.save_as(dst)
    ts = pydicom.dcmread(next(tmp_path.iterdir())).file_meta.TransferSyntaxUID
    assert ts.is_compressed
    vol = load_series(tmp_path)
    np.testing.assert_array_equal(vol.array, psir_classic.image)


def test_compressed_enhanced_loads(magnitude_enhanced, tmp_path: Path) -> None:
    dst = tmp_path / "rle.dcm"
    run_tool("dcmcrle", str(magnitude_enhanced.files[0]), str(dst))
    np.testing.assert_array_equal(load_series(dst).array, magnitude_enhanced.image)


# --- bad input -------------------------------------------------------------------------


@pytest.fixture()
def slices(psir_classic) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in psir_classic.files]


def _raises(exc: type[Exception], source, match: str) -> None:
    with pytest.raises(exc, match=match):
        load_series(source)


def test_not_dicom_file_is_named(series_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(series_dir, folder)
    (folder / "notes.txt").write_text("this is not DICOM\n")
    _raises(errors.NotDicomError, folder, "notes.txt.*not a DICOM file")


def test_truncated_file_is_named(series_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(series_dir, folder)
    victim = sorted(folder.iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.NotDicomError, match=victim.name) as info:
        load_series(folder)
    assert "truncated" in str(info.value) or "cannot be decoded" in str(info.value)


def test_truncated_header_is_named(series_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "s"
    shutil.copytree(series_dir, folder)
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])
    _raises(errors.SeriesLoadError, folder, victim.name)


def test_object_that_is_not_an_image(slices) -> None:
    sr = copy.deepcopy(slices[0])
    del sr.PixelData
    sr.SOPClassUID = pydicom.uid.ComprehensiveSRStorage
    _raises(errors.NotAnImageError, [*slices, sr], "not an image.*Comprehensive SR")


def test_mixed_orientations(slices) -> None:
    # A long-axis image (orientation rotated 70 degrees) slipped into the stack.
    row = np.array(slices[0].ImageOrientationPatient[:3], dtype=float)
    col = np.array(slices[0].ImageOrientationPatient[3:], dtype=float)
    a = np.deg2rad(70)
    normal = np.cross(row, col)
    col2 = col * np.cos(a) + normal * np.sin(a)
    slices[4].ImageOrientationPatient = [*row, *col2]
    _raises(errors.MixedOrientationError, slices, "2 orientations")


def test_nearly_parallel_slices(slices) -> None:
    row = np.array(slices[0].ImageOrientationPatient[:3], dtype=float)
    col = np.array(slices[0].ImageOrientationPatient[3:], dtype=float)
    a = np.deg2rad(2)
    normal = np.cross(row, col)
    slices[2].ImageOrientationPatient = [*row, *(col * np.cos(a) + normal * np.sin(a))]
    _raises(errors.NonParallelSlicesError, slices, "tilted 2.00 deg")


def test_inconsistent_pixel_spacing(slices) -> None:
    slices[3].PixelSpacing = [1.0, 1.0]
    _raises(errors.InconsistentGeometryError, slices, "pixel spacing differs")


def test_inconsistent_matrix(slices) -> None:
    ds = slices[3]
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = np.zeros((64, 64), dtype=np.uint16).tobytes()
    _raises(errors.InconsistentGeometryError, slices, "matrix differs.*64x64")


def test_duplicate_positions(slices) -> None:
    dup = copy.deepcopy(slices[5])
    dup.SOPInstanceUID = generate_uid()
    _raises(errors.DuplicatePositionError, [*slices, dup], "share the position")


def test_missing_position(slices) -> None:
    del slices[6].ImagePositionPatient
    _raises(errors.MissingGeometryError, slices, "missing ImagePositionPatient")


def test_missing_slice_gives_irregular_spacing(slices) -> None:
    _raises(errors.InconsistentGeometryError, slices[:4] + slices[5:], "irregular slice spacing")


def test_single_slice(slices) -> None:
    _raises(errors.SingleSliceError, slices[:1], "only one slice")


def test_two_series_need_a_choice(slices, magnitude_enhanced) -> None:
    other = pydicom.dcmread(magnitude_enhanced.files[0])
    _raises(errors.MultipleSeriesError, [*slices, other], "2 series")
    vol = load_series([*slices, other], series_instance_uid=slices[0].SeriesInstanceUID)
    assert vol.geometry.shape[0] == len(slices)


def test_empty_folder(tmp_path: Path) -> None:
    _raises(errors.NoImagesError, tmp_path, "no DICOM files")


def test_absurd_matrix_is_refused_before_decoding(slices) -> None:
    slices[0].Rows = 60000
    _raises(errors.UnsupportedImageError, slices, "matrix 60000x")


def test_colour_image_is_refused(slices) -> None:
    slices[0].SamplesPerPixel = 3
    _raises(errors.UnsupportedImageError, slices, "colour")
