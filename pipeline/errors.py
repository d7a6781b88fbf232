"""Typed errors for input the pipeline cannot use. Each message names the problem and,
where there is one, the file, so the node can record it on the job as it is."""

from __future__ import annotations


class SeriesLoadError(ValueError):
    """Base class: the input is not a usable image series."""


class NotDicomError(SeriesLoadError):
    """A file is not DICOM, or is truncated or corrupt so that it cannot be read."""


class NotAnImageError(SeriesLoadError):
    """A DICOM object holds no image (SR, presentation state, DICOMDIR, raw data...)."""


class UnsupportedImageError(SeriesLoadError):
    """An image the pipeline cannot use: colour, absurd matrix, unsupported pixel format."""


class NoImagesError(SeriesLoadError):
    """Nothing to load: an empty folder or list."""


class MultipleSeriesError(SeriesLoadError):
    """The input holds more than one series and none was chosen."""


class MissingGeometryError(SeriesLoadError):
    """ImagePositionPatient, ImageOrientationPatient or PixelSpacing is missing."""


class MixedOrientationError(SeriesLoadError):
    """Slices come from differently oriented planes (e.g. short axis mixed with long axis)."""


class NonParallelSlicesError(SeriesLoadError):
    """Slice planes are nearly, but not exactly, parallel: not one stack."""


class InconsistentGeometryError(SeriesLoadError):
    """Pixel spacing, matrix or slice spacing differ between slices, or the stack is sheared."""


class DuplicatePositionError(SeriesLoadError):
    """Two slices sit at the same position (repeated acquisition, TI scout, cine phases)."""


class SingleSliceError(SeriesLoadError):
    """Only one slice: a volume needs a stack."""
