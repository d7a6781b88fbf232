"""Segmentation with nnU-Net v2 on the heart crop (labels per `pipeline.labels`)."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from pipeline import runtime
from pipeline.models import ModelBundle

BATCH = 8  # slices per network call when each slice is one tile


def _predictor_class() -> type:
    """nnU-Net's predictor, two costs removed for the bundled case of one model whose
    patch holds a whole heart crop (numbers unchanged):

    - it loads the weights into the network before every prediction (so that several
      folds can share one network); with one fold they are loaded once;
    - it predicts tile by tile, one tile per call, fed by a thread; when every slice is
      one tile (the crop fits the patch), the slices go through the network in batches.
      A lone tile's Gaussian weight divides out, so the logits are the same.
    Anything else (several folds, crops larger than the patch) takes nnU-Net's own path.
    """
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class Predictor(nnUNetPredictor):
        _loaded = False

        @torch.inference_mode()
        def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
            if len(self.list_of_parameters) != 1:
                return super().predict_logits_from_preprocessed_data(data)
            if not self._loaded:
                self.network.load_state_dict(self.list_of_parameters[0])
                self._loaded = True
            threads = torch.get_num_threads()  # nnU-Net's thread rule, as in its own path
            torch.set_num_threads(min(default_num_processes, threads))
            try:
                return self.predict_sliding_window_return_logits(data).to("cpu")
            finally:
                torch.set_num_threads(threads)

        @torch.inference_mode()
        def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
            patch = tuple(self.configuration_manager.patch_size)
            if input_image.ndim != 4 or len(patch) != 2 or self.device.type == "cuda":
                return super().predict_sliding_window_return_logits(input_image)
            data, revert = pad_nd_image(input_image, patch, "constant", {"value": 0}, True, None)
            if tuple(data.shape[2:]) != patch:
                return super().predict_sliding_window_return_logits(input_image)
            if self.network.training:  # eval() walks every module: once, not per call
                self.network.eval()
            slices = data[0][:, None].float()  # (z, 1, y, x)
            logits = torch.cat(
                [
                    self._internal_maybe_mirror_and_predict(slices[k : k + BATCH])
                    for k in range(0, slices.shape[0], BATCH)
                ]
            )  # (z, C, y, x)
            return logits.permute(1, 0, 2, 3)[(slice(None), *revert[1:])]

    return Predictor


class Segmenter:
    """``nnUNetPredictor`` initialised from a trained model folder (any nnU-Net v2 model)."""

    def __init__(self, bundle: ModelBundle, device: str = "cpu", mirroring: bool = False):
        runtime.prepare()
        import torch

        runtime.set_threads()
        # nnU-Net prints a CPU notice and its trainer-class search to stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            self.predictor = _predictor_class()(
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
        if mirroring and bundle.mirror_axes is not None:
            # fewer mirrored passes than the checkpoint allows (each one is a network pass)
            allowed = self.predictor.allowed_mirroring_axes or ()
            self.predictor.allowed_mirroring_axes = tuple(
                a for a in bundle.mirror_axes if a in allowed
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
