"""Tests use the same Orthanc launcher as ``lge-node demo``."""

from node.demo.peers import Orthanc, free_port

__all__ = ["Orthanc", "free_port"]
