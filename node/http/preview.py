"""PNG previews of held instances for the console: result pages (RGB secondary captures)
as they are, grey-scale images windowed to their 1st-99th percentile."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

MAX_SIDE = 768


def png_of(path: Path, frame: int = 0) -> bytes:
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[min(frame, pixels.shape[0] - 1)]
    if ds.get("SamplesPerPixel", 1) == 3:
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB")
    else:
        values = pixels.astype(np.float32)
        lo, hi = np.percentile(values, [1.0, 99.0])
        scaled = np.clip((values - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255
        image = Image.fromarray(scaled.astype(np.uint8), "L")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
