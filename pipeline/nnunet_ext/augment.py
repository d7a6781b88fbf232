"""Training-time augmentation for LGE robustness (used by ``nnUNetTrainer_LGERobust``).

nnU-Net's own transforms cover generic intensity and geometry. LGE adds what a scanner, a
field strength or an inversion time change in the image while the anatomy stays: the
contrast *between tissues* (blood vs scar, healthy myocardium not fully nulled when the
inversion time is off, MVO more or less dark) and PSIR vs magnitude reconstruction. Those
two need the labels, so they are written here as batchgeneratorsv2 transforms; the soft
targets for the KL term are made here too.

Whole-image intensity inversion is deliberately not used: scar and MVO are defined by
being bright and dark, so inverting would teach the model to ignore the one cue that
separates them. Dark-blood variants are covered by moving the blood pool's signal.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

BLOOD, MYOCARDIUM, SCAR, MVO, RV_BLOOD = 1, 2, 3, 4, 5


def _soft(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """A (X, Y) 0/1 mask blurred in-plane: a partial-volume-like weight."""
    if sigma <= 0:
        return mask
    radius = max(1, round(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    m = mask[None, None]
    m = F.conv2d(F.pad(m, (radius, radius, 0, 0), mode="replicate"), k[None, None, None, :])
    m = F.conv2d(F.pad(m, (0, 0, radius, radius), mode="replicate"), k[None, None, :, None])
    return m[0, 0]


class TissueContrastTransform(BasicTransform):
    """Move the mean signal of blood pools, myocardium, scar and MVO relative to each
    other, in units of this patch's scar-to-myocardium contrast.

    The order that defines the labels is kept: scar stays brighter than healthy
    myocardium and MVO darker than scar. Everything else (blood brighter or darker than
    scar, myocardium not nulled) is fair game.
    """

    def __init__(
        self,
        myocardium: tuple[float, float] = (0.0, 0.4),
        blood: tuple[float, float] = (-0.9, 0.25),
        scar: tuple[float, float] = (-0.15, 0.1),
        mvo: tuple[float, float] = (-0.3, 0.4),
        sigma: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        super().__init__()
        self.ranges = {"myocardium": myocardium, "blood": blood, "scar": scar, "mvo": mvo}
        self.sigma = sigma

    def get_parameters(self, **data_dict: torch.Tensor) -> dict:
        return {
            "deltas": {k: float(np.random.uniform(*r)) for k, r in self.ranges.items()},
            "sigma": float(np.random.uniform(*self.sigma)),
        }

    def apply(self, data_dict: dict, **params: object) -> dict:
        image, seg = data_dict.get("image"), data_dict.get("segmentation")
        if image is None or seg is None or image.ndim != 3:  # 2D patches (C, X, Y) only
            return data_dict
        labels = seg[0]
        means = {lab: image[0][labels == lab].mean() for lab in (MYOCARDIUM, SCAR, BLOOD)}
        myo = means[MYOCARDIUM]
        if not torch.isfinite(myo):
            return data_dict  # no myocardium in this patch: nothing to anchor to
        bright = means[SCAR] if torch.isfinite(means[SCAR]) else means[BLOOD]
        contrast = float(bright - myo) if torch.isfinite(bright) else 0.0
        if contrast <= 0:
            return data_dict
        deltas = params["deltas"]
        assert isinstance(deltas, dict)
        sigma = float(params["sigma"])  # type: ignore[arg-type]
        # MVO must stay darker than scar, scar brighter than myocardium.
        d_myo = deltas["myocardium"]
        d_scar = max(deltas["scar"], d_myo - 0.6)
        d_mvo = min(deltas["mvo"], d_scar + 0.5)
        shifts = {
            MYOCARDIUM: d_myo,
            SCAR: d_scar,
            MVO: d_mvo,
            BLOOD: deltas["blood"],
            RV_BLOOD: deltas["blood"],
        }
        for lab, d in shifts.items():
            mask = (labels == lab).float()
            if d and mask.any():
                image[0] += d * contrast * _soft(mask, sigma)
        return data_dict


class MagnitudeFromPsirTransform(BasicTransform):
    """PSIR -> magnitude-like: fold the signal about the nulled myocardium's level, as a
    magnitude reconstruction does (long-T1 tissue such as MVO turns from negative to
    positive). On a magnitude image the fold barely changes anything."""

    def __init__(self, jitter: tuple[float, float] = (-0.15, 0.1)) -> None:
        super().__init__()
        self.jitter = jitter

    def get_parameters(self, **data_dict: torch.Tensor) -> dict:
        return {"jitter": float(np.random.uniform(*self.jitter))}

    def apply(self, data_dict: dict, **params: object) -> dict:
        image, seg = data_dict.get("image"), data_dict.get("segmentation")
        if image is None or seg is None:
            return data_dict
        myo = image[0][seg[0] == MYOCARDIUM]
        if myo.numel() < 10:
            return data_dict
        level = myo.median()
        scale = image[0].std().clamp_min(1e-6)
        mean = image[0].mean()
        image[0] = (image[0] - level - float(params["jitter"]) * scale).abs()  # type: ignore[arg-type]
        # back to this patch's mean/std so the network sees the usual intensity scale
        image[0] = (image[0] - image[0].mean()) / image[0].std().clamp_min(1e-6) * scale + mean
        return data_dict


def soft_targets(
    labels: torch.Tensor, n_classes: int, sigma: float, epsilon: float = 0.01
) -> torch.Tensor:
    """(B, 1, X, Y) hard labels -> (B, C, X, Y) soft targets: one-hot maps blurred by a
    Gaussian of ``sigma`` pixels (boundaries uncertain by about that much), renormalized,
    with a small uniform floor so the KL divergence stays finite."""
    onehot = F.one_hot(labels[:, 0].long().clamp_min(0), n_classes).permute(0, 3, 1, 2).float()
    radius = max(1, round(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=labels.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).to(onehot.dtype)
    c = n_classes
    out = F.conv2d(
        F.pad(onehot, (radius, radius, 0, 0), mode="replicate"),
        k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
        groups=c,
    )
    out = F.conv2d(
        F.pad(out, (0, 0, radius, radius), mode="replicate"),
        k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
        groups=c,
    )
    out = out / out.sum(1, keepdim=True).clamp_min(1e-6)
    return (1 - epsilon) * out + epsilon / c


def kl_to_soft_targets(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of KL(target || softmax(logits))."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (target * (target.log() - log_p)).sum(1).mean()


def robust_training_transforms(
    patch_size: tuple[int, ...],
    rotation_for_da: object,
    deep_supervision_scales: list | tuple | None,
    mirror_axes: tuple[int, ...] | None,
) -> BasicTransform:
    """The robust trainer's pipeline for 2D patches: spatial, then appearance (each with
    its own probability, wider than nnU-Net's defaults), then nnU-Net's target handling."""
    from batchgeneratorsv2.transforms.intensity.brightness import (
        MultiplicativeBrightnessTransform,
    )
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.local.brightness_gradient import (
        BrightnessGradientAdditiveTransform,
    )
    from batchgeneratorsv2.transforms.local.local_contrast import LocalContrastTransform
    from batchgeneratorsv2.transforms.local.local_gamma import LocalGammaTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.noise.rician import RicianNoiseTransform
    from batchgeneratorsv2.transforms.noise.sharpen import SharpeningTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import (
        DownsampleSegForDSTransform,
    )
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    side = float(min(patch_size))

    def maybe(t: BasicTransform, p: float) -> BasicTransform:
        return RandomTransform(t, apply_probability=p)

    transforms: list[BasicTransform] = [
        SpatialTransform(
            patch_size,
            patch_center_dist_from_border=0,
            random_crop=False,
            p_elastic_deform=0,
            p_rotation=0.3,
            rotation=rotation_for_da,
            p_scaling=0.35,
            scaling=(0.6, 1.5),
            p_synchronize_scaling_across_axes=0.6,
            bg_style_seg_sampling=False,
            border_mode_seg="constant",
            padding_value_seg=-1,
        ),
        # tissue-to-tissue contrast first, on the clean patch (padding is label -1: untouched)
        maybe(TissueContrastTransform(), 0.4),
        maybe(MagnitudeFromPsirTransform(), 0.15),
        maybe(
            BrightnessGradientAdditiveTransform(
                scale=(side * 0.3, side * 1.2), loc=(-0.5, 1.5), max_strength=(0.3, 1.5),
                mean_centered=False,
            ),
            0.3,
        ),
        maybe(
            LocalGammaTransform(
                scale=(side * 0.3, side * 1.2), loc=(-0.5, 1.5), gamma=(0.6, 1.6)
            ),
            0.2,
        ),
        maybe(
            LocalContrastTransform(
                scale=(side * 0.3, side), loc=(-0.5, 1.5), new_contrast=(0.6, 1.5)
            ),
            0.2,
        ),
        maybe(
            MultiplicativeBrightnessTransform(
                multiplier_range=BGContrast((0.6, 1.5)), synchronize_channels=True, p_per_channel=1
            ),
            0.3,
        ),
        maybe(
            ContrastTransform(
                contrast_range=BGContrast((0.55, 1.6)), preserve_range=False,
                synchronize_channels=True, p_per_channel=1,
            ),
            0.3,
        ),
        maybe(
            GammaTransform(
                gamma=BGContrast((0.6, 1.7)), p_invert_image=1, synchronize_channels=True,
                p_per_channel=1, p_retain_stats=1,
            ),
            0.15,
        ),
        maybe(
            GammaTransform(
                gamma=BGContrast((0.5, 2.0)), p_invert_image=0, synchronize_channels=True,
                p_per_channel=1, p_retain_stats=1,
            ),
            0.35,
        ),
        maybe(
            GaussianBlurTransform(
                blur_sigma=(0.4, 1.3), synchronize_channels=True, synchronize_axes=False,
                p_per_channel=1,
            ),
            0.25,
        ),
        maybe(
            SimulateLowResolutionTransform(
                scale=(0.4, 1), synchronize_channels=True, synchronize_axes=False,
                ignore_axes=None, allowed_channels=None, p_per_channel=1,
            ),
            0.3,
        ),
        maybe(SharpeningTransform(strength=(0.1, 0.6), p_per_channel=1), 0.1),
        maybe(
            GaussianNoiseTransform(
                noise_variance=(0, 0.25), p_per_channel=1, synchronize_channels=True
            ),
            0.3,
        ),
        maybe(RicianNoiseTransform(noise_variance=(0.0, 0.3)), 0.15),
    ]  # fmt: skip
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=mirror_axes))
    transforms.append(RemoveLabelTansform(-1, 0))
    if deep_supervision_scales is not None:
        transforms.append(DownsampleSegForDSTransform(ds_scales=deep_supervision_scales))
    return ComposeTransforms(transforms)
