"""Memory a job may take, measured in a fresh process (peak RSS), not asserted as time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

DETECT = """
import dataclasses, resource, sys
import numpy as np
from pipeline.localize import HeartLocator
from pipeline.models import ModelBundle
from pipeline.series import load_series

volume = load_series(sys.argv[1])
n = int(sys.argv[2])
reps = -(-n // volume.array.shape[0])
array = np.tile(volume.array, (reps, 1, 1))[:n]
geometry = dataclasses.replace(volume.geometry, shape=array.shape)
big = dataclasses.replace(volume, array=array, geometry=geometry, frames=[], datasets=[])
locator = HeartLocator(ModelBundle.load().yolo_weights)
locator.detect(volume)  # warm-up: lazy allocations of the first call are not per-slice
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
boxes, _ = locator.detect(big)
assert len(boxes) == n
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def _peak_growth_kb(series: Path, n: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", DETECT, str(series), str(n)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_heart_detection_memory_does_not_grow_with_the_number_of_slices(series_dir) -> None:
    """YOLO once got every slice of a series in one call: ~3.6 MB per 256^2 slice at
    once (+1.36 GB for 128 slices, ~3.7 GB at the 1024-slice limit). In bounded chunks,
    128 slices cost no more peak memory than 16 beyond the volume itself."""
    small = _peak_growth_kb(series_dir, 16)
    large = _peak_growth_kb(series_dir, 128)
    volume_kb = 128 * 256 * 256 * 4 // 1024 * 2  # the tiled array and its uint8/3-channel copy
    assert large - small < volume_kb + 100_000, (small, large)
