"""`Volume`: the one type that carries an image stack between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel array sits in patient space (DICOM LPS, millimetres).

    Index (k, j, i) = (slice, row, column) maps to
    ``origin + i * col_spacing * row_direction + j * row_spacing * column_direction
    + k * slice_spacing * slice_direction``. ``row_direction`` is the first triplet of
    ImageOrientationPatient (the direction along a row, i.e. of increasing column index).
    """

    shape: tuple[int, int, int]
    origin: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    slice_direction: np.ndarray
    pixel_spacing: tuple[float, float]  # DICOM order: (between rows, between columns)
    slice_spacing: float  # between slice centres, from positions (not SliceThickness)
    slice_thickness: float | None = None

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return (self.slice_spacing, self.pixel_spacing[0], self.pixel_spacing[1])

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_zyx)) / 1000.0

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the x, y, z index axes in patient space."""
        return np.stack([self.row_direction, self.column_direction, self.slice_direction], axis=1)

    def slice_position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k`` (centre of its first voxel)."""
        return self.origin + k * self.slice_spacing * self.slice_direction

    def index_to_patient(self, kji: np.ndarray) -> np.ndarray:
        """(..., 3) array of (k, j, i) indices to (..., 3) LPS positions."""
        kji = np.asarray(kji, dtype=float)
        return (
            self.origin
            + kji[..., 2:3] * self.pixel_spacing[1] * self.row_direction
            + kji[..., 1:2] * self.pixel_spacing[0] * self.column_direction
            + kji[..., 0:1] * self.slice_spacing * self.slice_direction
        )

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array with this geometry (e.g. to write NIfTI)."""
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match geometry {self.shape}")
        image = sitk.GetImageFromArray(array)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing((self.pixel_spacing[1], self.pixel_spacing[0], self.slice_spacing))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    def mismatch(self, other: Geometry, tol_mm: float = 1e-3) -> str | None:
        """Why ``other`` does not describe the same voxel grid, or None when it does."""
        if self.shape != other.shape:
            return f"shape {other.shape} != {self.shape}"
        if not np.allclose(self.spacing_zyx, other.spacing_zyx, atol=tol_mm):
            return f"spacing {other.spacing_zyx} != {self.spacing_zyx}"
        if not np.allclose(self.origin, other.origin, atol=tol_mm):
            return f"origin {other.origin.round(3)} != {self.origin.round(3)}"
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            return "orientation differs"
        return None

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        sx, sy, sz = image.GetSpacing()
        nx, ny, nz = image.GetSize()
        return cls(
            shape=(nz, ny, nx),
            origin=np.array(image.GetOrigin(), dtype=float),
            row_direction=direction[:, 0],
            column_direction=direction[:, 1],
            slice_direction=direction[:, 2],
            pixel_spacing=(sy, sx),
            slice_spacing=sz,
        )


@dataclass(frozen=True)
class FrameRef:
    """Which stored frame a slice of the volume came from (for SEG/SR references)."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None  # 1-based for multi-frame objects, None for single-frame
    dataset_index: int  # index into Volume.datasets


@dataclass
class Volume:
    """A short-axis stack as float32 (z, y, x) after Modality LUT (rescale) is applied.

    ``frames[k]`` says which source object (and frame) slice ``k`` came from; ``datasets``
    are the source objects (one per slice for classic MR, a single one for enhanced MR).
    """

    array: np.ndarray
    geometry: Geometry
    datasets: list[Dataset]
    frames: list[FrameRef] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.shape != self.geometry.shape:
            raise ValueError(f"array {self.array.shape} != geometry {self.geometry.shape}")

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def is_multiframe(self) -> bool:
        return self.frames[0].frame_number is not None if self.frames else False
