"""Seconds per phantom (classic and enhanced, magnitude and PSIR) on this machine.

    uv run python bench/phantom_speed.py [--seeds 5]

Prints a table; the peer in the same run is the bare cost of writing the same series with
pydicom (no rendering), so the table shows what the image formation itself costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.research.phantom import PhantomSpec, make_phantom
from pipeline.research.phantom.dicom import StudyInfo, write_classic, write_enhanced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    table = Table(title="phantom generation (s per study)")
    for col in ("variant", "slices (mean)", "total mean", "total max", "write-only peer"):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("psir", "magnitude"):
            for enhanced in (False, True):
                times, slices, peer = [], [], []
                for seed in range(args.seeds):
                    out = Path(tmp) / f"{kind}{enhanced}{seed}"
                    case = make_phantom(out, PhantomSpec(seed=seed, kind=kind, enhanced=enhanced))
                    times.append(case.seconds)
                    slices.append(case.geometry.shape[0])
                    writer = write_enhanced if enhanced else write_classic
                    t0 = time.perf_counter()
                    writer(
                        out / "peer", case.image, case.acquisition, StudyInfo.from_seed(seed), kind
                    )
                    peer.append(time.perf_counter() - t0)
                table.add_row(
                    f"{kind}+enhanced" if enhanced else kind,
                    f"{np.mean(slices):.1f}",
                    f"{np.mean(times):.2f}",
                    f"{np.max(times):.2f}",
                    f"{np.mean(peer):.3f}",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
