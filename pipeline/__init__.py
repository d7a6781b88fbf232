"""LGE analysis pipeline: series loading, phantoms, localization, segmentation, quantification.

Usable without the node (``lge-node analyze``); never opens sockets or writes to the node's DB.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lge-node")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"
