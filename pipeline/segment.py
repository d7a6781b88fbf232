"""Segmentation with nnU-Net v2 on the heart crop (labels per `pipeline.labels`)."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from pipeline import runtime
from pipeline.models import ModelBundle


class Segmenter:
    """``nnUNetPredictor`` initialised from a trained model folder (any nnU-Net v2 model)."""

    def __init__(self, bundle: ModelBundle, device: str = "cpu", mirroring: bool = False):
        runtime.prepare()
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        runtime.set_threads()
        # nnU-Net prints a CPU notice and its trainer-class search to stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            self.predictor = nnUNetPredictor(
                tile_step_size=0.5,
                use_gaussian=True,
                use_mirroring=mirroring,
                perform_everything_on_device=device == "cuda",
                device=torch.device(device),
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            self.predictor.initialize_from_trained_model_folder(
                str(bundle.nnunet_folder),
                use_folds=tuple(int(f) if f.isdigit() else f for f in bundle.folds),
                checkpoint_name="checkpoint_final.pth",
            )

    def segment(self, crop: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
        """(z, y, x) float image -> (z, y, x) uint8 labels."""
        return self.segment_with_probabilities(crop, spacing_zyx)[0]

    def segment_with_probabilities(
        self, crop: np.ndarray, spacing_zyx: tuple[float, float, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(z, y, x) float image -> labels (z, y, x) uint8 and class probabilities
        (C, z, y, x) float32 on the same grid (what the QC's self-agreement reads)."""
        seg, probabilities = self.predictor.predict_single_npy_array(
            crop[None].astype(np.float32), {"spacing": list(spacing_zyx)}, None, None, True
        )
        return np.asarray(seg, dtype=np.uint8), np.asarray(probabilities, dtype=np.float32)
