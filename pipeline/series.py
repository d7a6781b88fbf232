"""Series loading: DICOM files or datasets (classic or enhanced MR) to a `Volume`.

Geometry comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing only;
slice spacing is measured between slice centres, never taken from SliceThickness (LGE
stacks often have gaps). Every way a series can be unusable raises a typed
`pipeline.errors.SeriesLoadError` whose message names the problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.errors import (
    DuplicatePositionError,
    InconsistentGeometryError,
    MissingGeometryError,
    MixedOrientationError,
    MultipleSeriesError,
    NoImagesError,
    NonParallelSlicesError,
    NotAnImageError,
    NotDicomError,
    SingleSliceError,
    UnsupportedImageError,
)
from pipeline.instance import frame_value
from pipeline.volume import FrameRef, Geometry, Volume

# Beyond these the input is not a cardiac MR stack but a mistake or an attack on memory.
MAX_MATRIX = 2048
MAX_SLICES = 1024

# Orientation tolerances: planes within PARALLEL_DEG are one stack; beyond MIXED_DEG they are
# clearly different views (SAX vs 4-chamber); in between, an almost-parallel mess.
PARALLEL_DEG = 0.05
MIXED_DEG = 10.0
DUPLICATE_MM = 0.01
SHEAR_MM = 0.1
SPACING_REL_TOL = 0.05
PIXEL_SPACING_TOL = 1e-4


@dataclass
class _Slice:
    dataset_index: int
    frame_index: int | None  # 0-based frame for multi-frame objects
    position: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None
    source: str

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_direction, self.column_direction)
        return n / np.linalg.norm(n)


def read_datasets(paths: Iterable[Path]) -> list[tuple[str, Dataset]]:
    """Read files as DICOM, raising `NotDicomError` naming the first that is not."""
    out: list[tuple[str, Dataset]] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as exc:
            raise NotDicomError(f"{path}: not a DICOM file ({exc})") from exc
        except Exception as exc:  # truncated or corrupt: pydicom raises many kinds
            raise NotDicomError(f"{path}: truncated or corrupt DICOM ({exc})") from exc
        out.append((str(path), ds))
    return out


def dicom_files(folder: Path) -> list[Path]:
    """All files below ``folder`` that may be instances (hidden files and DICOMDIR skipped)."""
    if not folder.is_dir():
        raise NoImagesError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != "DICOMDIR"
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def load_series(
    source: Path | str | Sequence[Path | str] | Sequence[Dataset],
    series_instance_uid: str | None = None,
) -> Volume:
    """Load one image series into a `Volume`.

    Parameters
    ----------
    source
        A folder (searched recursively), a list of file paths, or a list of datasets.
    series_instance_uid
        Which series to load when the input holds several.

    Raises
    ------
    pipeline.errors.SeriesLoadError
        A subclass naming why the input is not a usable stack.
    """
    named = _named_datasets(source)
    if not named:
        raise NoImagesError(f"{source}: no DICOM files found")
    for name, ds in named:
        _require_image(name, ds)

    by_series: dict[str, list[tuple[str, Dataset]]] = {}
    for name, ds in named:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((name, ds))
    if series_instance_uid is not None:
        if series_instance_uid not in by_series:
            raise NoImagesError(f"series {series_instance_uid} is not in the input")
        named = by_series[series_instance_uid]
    elif len(by_series) > 1:
        listing = ", ".join(
            f"{uid or '<no UID>'} ({len(v)} objects, {v[0][1].get('SeriesDescription', '')!s})"
            for uid, v in by_series.items()
        )
        raise MultipleSeriesError(f"input holds {len(by_series)} series; choose one: {listing}")

    datasets = [ds for _, ds in named]
    slices = [s for i, (name, ds) in enumerate(named) for s in _slices_of(i, name, ds)]
    if len(slices) > MAX_SLICES:
        raise UnsupportedImageError(f"{len(slices)} slices: more than {MAX_SLICES}")
    if len(slices) < 2:
        raise SingleSliceError(
            f"only one slice ({slices[0].source}); a short-axis stack needs at least two"
        )

    geometry, ordered = _stack_geometry(slices)
    array = np.empty(geometry.shape, dtype=np.float32)
    pixel_cache: dict[int, np.ndarray] = {}
    for k, s in enumerate(ordered):
        if s.dataset_index not in pixel_cache:
            pixel_cache[s.dataset_index] = _pixels(s.source, datasets[s.dataset_index])
        pixels = pixel_cache[s.dataset_index]
        frame = pixels if s.frame_index is None else pixels[s.frame_index]
        array[k] = frame.astype(np.float32) * s.slope + s.intercept

    frames = [
        FrameRef(
            sop_instance_uid=str(datasets[s.dataset_index].SOPInstanceUID),
            sop_class_uid=str(datasets[s.dataset_index].SOPClassUID),
            frame_number=None if s.frame_index is None else s.frame_index + 1,
            dataset_index=s.dataset_index,
        )
        for s in ordered
    ]
    # Classic series: keep datasets in slice order so datasets[k] is slice k.
    if all(f.frame_number is None for f in frames):
        order = [f.dataset_index for f in frames]
        datasets = [datasets[i] for i in order]
        frames = [
            FrameRef(f.sop_instance_uid, f.sop_class_uid, None, k) for k, f in enumerate(frames)
        ]
    return Volume(array=array, geometry=geometry, datasets=datasets, frames=frames)


def _named_datasets(
    source: Path | str | Sequence[Path | str] | Sequence[Dataset],
) -> list[tuple[str, Dataset]]:
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_file():
            return read_datasets([path])
        return read_datasets(dicom_files(path))
    items = list(source)
    if items and all(isinstance(x, Dataset) for x in items):
        return [(f"dataset[{i}]", ds) for i, ds in enumerate(items) if isinstance(ds, Dataset)]
    return read_datasets(Path(x) for x in items if isinstance(x, str | Path))


def _require_image(name: str, ds: Dataset) -> None:
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        what = ds.get("SOPClassUID")
        what = what.name if what is not None else "unknown object"
        raise NotAnImageError(f"{name}: not an image ({what}, no pixel data)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnsupportedImageError(f"{name}: colour images are not supported")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if not (1 <= rows <= MAX_MATRIX and 1 <= cols <= MAX_MATRIX):
        raise UnsupportedImageError(f"{name}: matrix {rows}x{cols} is outside 1..{MAX_MATRIX}")


def _vector(value: object, n: int, what: str, name: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=float)  # type: ignore[attr-defined,type-var]
    except (TypeError, ValueError) as exc:
        raise MissingGeometryError(f"{name}: {what} is not numeric ({value!r})") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise MissingGeometryError(f"{name}: {what} must have {n} finite values, got {value!r}")
    return arr


def _slices_of(index: int, name: str, ds: Dataset) -> list[_Slice]:
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    multiframe = per_frame is not None or n_frames > 1
    if multiframe and per_frame is not None and len(per_frame) != n_frames:
        raise MissingGeometryError(
            f"{name}: {len(per_frame)} per-frame groups for {n_frames} frames"
        )
    out = []
    for f in range(n_frames):
        group = per_frame[f] if per_frame is not None else None
        where = f"{name} frame {f + 1}" if multiframe else name
        ipp = frame_value(ds, group, "PlanePositionSequence", "ImagePositionPatient")
        iop = frame_value(ds, group, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = frame_value(ds, group, "PixelMeasuresSequence", "PixelSpacing")
        missing = [
            n
            for n, v in (
                ("ImagePositionPatient", ipp),
                ("ImageOrientationPatient", iop),
                ("PixelSpacing", spacing),
            )
            if v is None or (hasattr(v, "__len__") and len(v) == 0)
        ]
        if missing:
            raise MissingGeometryError(f"{where}: missing {', '.join(missing)}")
        iop_v = _vector(iop, 6, "ImageOrientationPatient", where)
        row, col = iop_v[:3], iop_v[3:]
        if (
            abs(np.linalg.norm(row) - 1) > 1e-3
            or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(row @ col) > 1e-3
        ):
            raise MissingGeometryError(f"{where}: ImageOrientationPatient is not orthonormal")
        ps = _vector(spacing, 2, "PixelSpacing", where)
        if np.any(ps <= 0):
            raise MissingGeometryError(f"{where}: PixelSpacing must be positive, got {ps}")
        slope = frame_value(ds, group, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = frame_value(ds, group, "PixelValueTransformationSequence", "RescaleIntercept")
        thickness = frame_value(ds, group, "PixelMeasuresSequence", "SliceThickness")
        out.append(
            _Slice(
                dataset_index=index,
                frame_index=f if multiframe else None,
                position=_vector(ipp, 3, "ImagePositionPatient", where),
                row_direction=row / np.linalg.norm(row),
                column_direction=col / np.linalg.norm(col),
                pixel_spacing=(float(ps[0]), float(ps[1])),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=float(slope) if slope not in (None, "") else 1.0,
                intercept=float(intercept) if intercept not in (None, "") else 0.0,
                thickness=float(thickness) if thickness not in (None, "") else None,
                source=where,
            )
        )
    return out


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(a @ b), -1.0, 1.0))))


def _stack_geometry(slices: list[_Slice]) -> tuple[Geometry, list[_Slice]]:
    ref = slices[0]
    worst = max(
        slices,
        key=lambda s: max(
            _angle_deg(s.normal, ref.normal), _angle_deg(s.row_direction, ref.row_direction)
        ),
    )
    angle = max(
        _angle_deg(worst.normal, ref.normal), _angle_deg(worst.row_direction, ref.row_direction)
    )
    if angle > MIXED_DEG:
        n_orient = len(
            {np.round(np.r_[s.row_direction, s.column_direction], 2).tobytes() for s in slices}
        )
        raise MixedOrientationError(
            f"slices have {n_orient} orientations ({ref.source} and {worst.source} differ by "
            f"{angle:.1f} deg): not one short-axis stack"
        )
    if angle > PARALLEL_DEG:
        raise NonParallelSlicesError(
            f"{ref.source} and {worst.source} are tilted {angle:.2f} deg against each other; "
            f"a stack needs parallel planes (tolerance {PARALLEL_DEG} deg)"
        )

    for s in slices:
        if (s.rows, s.columns) != (ref.rows, ref.columns):
            raise InconsistentGeometryError(
                f"matrix differs: {ref.source} is {ref.rows}x{ref.columns}, "
                f"{s.source} is {s.rows}x{s.columns}"
            )
        if np.max(np.abs(np.subtract(s.pixel_spacing, ref.pixel_spacing))) > PIXEL_SPACING_TOL:
            raise InconsistentGeometryError(
                f"pixel spacing differs: {ref.source} has {ref.pixel_spacing}, "
                f"{s.source} has {s.pixel_spacing}"
            )

    normal = ref.normal
    ordered = sorted(slices, key=lambda s: float(s.position @ normal))
    depth = np.array([s.position @ normal for s in ordered])
    steps = np.diff(depth)
    dup = np.flatnonzero(steps < DUPLICATE_MM)
    if dup.size:
        a, b = ordered[dup[0]], ordered[dup[0] + 1]
        raise DuplicatePositionError(
            f"{a.source} and {b.source} share the position {np.round(a.position, 3).tolist()} "
            f"({len(dup)} duplicate(s)): repeated acquisition or multiple phases in one series"
        )
    spacing = float(np.median(steps))
    if np.max(np.abs(steps - spacing)) > SPACING_REL_TOL * spacing:
        raise InconsistentGeometryError(
            f"irregular slice spacing {np.round(steps, 2).tolist()} mm: a missing slice or "
            "several stacks in one series"
        )
    in_plane = [
        np.linalg.norm((b.position - a.position) - ((b.position - a.position) @ normal) * normal)
        for a, b in pairwise(ordered)
    ]
    if max(in_plane) > SHEAR_MM:
        raise InconsistentGeometryError(
            f"slice centres move {max(in_plane):.2f} mm in-plane between slices: a sheared "
            "stack is not supported"
        )
    geometry = Geometry(
        shape=(len(ordered), ref.rows, ref.columns),
        origin=ordered[0].position.copy(),
        row_direction=ref.row_direction.copy(),
        column_direction=ref.column_direction.copy(),
        slice_direction=normal.copy(),
        pixel_spacing=ref.pixel_spacing,
        slice_spacing=spacing,
        slice_thickness=ref.thickness,
    )
    return geometry, ordered


def _pixels(name: str, ds: Dataset) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # truncated data, unsupported codec, bad lengths
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID", "unknown") if meta is not None else "unknown"
        raise NotDicomError(
            f"{name}: pixel data cannot be decoded (transfer syntax {ts}): {exc}"
        ) from exc
