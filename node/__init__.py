"""The DICOM node: networking, storage, index DB, scheduling, jobs, dispatch, config, CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lge-node")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
