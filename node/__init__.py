"""The DICOM node: networking, storage, index DB, scheduling, jobs, dispatch, config, CLI."""

from pipeline import __version__

__all__ = ["__version__"]
