"""Seconds per image for each pipeline stage on this CPU, peak memory, and what model
size costs: the bundled reduced nnU-Net against a default-size nnU-Net 2D network
(random weights; only its cost is measured) on the same heart crops, in the same run.

    uv run python bench/pipeline_speed.py [--cases 6] [--model-dir pipeline/demo_models]

The published pipeline (LGE-CMRnet) reports 0.05 s per image on a GPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline import runtime

runtime.prepare()

from pipeline.models import ModelBundle  # noqa: E402
from pipeline.research.evaluate import eval_specs  # noqa: E402
from pipeline.research.phantom import make_phantom  # noqa: E402
from pipeline.run import Pipeline  # noqa: E402
from pipeline.series import load_series  # noqa: E402

STAGES = ("localization", "segmentation", "postprocessing", "quantification", "total")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def network_cost(network, crops: list[np.ndarray], side: int, repeats: int = 3) -> float:
    """Seconds per slice for a forward pass of ``network`` over the crop slices, each
    resized to ``side`` x ``side`` (the network's patch)."""
    import torch

    network.eval()
    x = torch.cat(
        [
            torch.nn.functional.interpolate(
                torch.from_numpy(c[:, None].astype(np.float32)),
                size=(side, side),
                mode="bilinear",
            )
            for c in crops
        ]
    )
    with torch.inference_mode():
        network(x[:2])  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            for i in range(0, len(x), 8):
                network(x[i : i + 8])
        return (time.perf_counter() - t) / (repeats * len(x))


def default_nnunet_2d(n_classes: int):
    """nnU-Net's default 2D U-Net for a 128x128 patch (6 stages, 32 -> 512 features)."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    return PlainConvUNet(
        input_channels=1,
        n_stages=6,
        features_per_stage=[32, 64, 128, 256, 512, 512],
        conv_op=torch.nn.Conv2d,
        kernel_sizes=[[3, 3]] * 6,
        strides=[[1, 1]] + [[2, 2]] * 5,
        n_conv_per_stage=[2] * 6,
        num_classes=n_classes,
        n_conv_per_stage_decoder=[2] * 5,
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()
    bundle = ModelBundle.load(args.model_dir)
    rss_before = peak_rss_mb()
    pipeline = Pipeline(bundle)
    rss_models = peak_rss_mb()
    per_image: dict[str, list[float]] = {s: [] for s in STAGES}
    crops: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in eval_specs(args.cases):
            case = make_phantom(Path(tmp) / str(spec.seed), spec)
            volume = load_series(case.out_dir / "dicom")
            pipeline.run(volume)  # warm caches once per case shape
            result = pipeline.run(volume)
            n = volume.array.shape[0]
            for s in STAGES:
                per_image[s].append(result.timings[s] / n)
            ys, xs = result.localization.roi.slices
            crop = volume.array[:, ys, xs]
            crops.append((crop - crop.mean()) / (crop.std() + 1e-6))
    images = sum(c.shape[0] for c in crops)

    net = pipeline.segmenter.predictor.network
    # The tiny plan's patch is 80^2; nnU-Net's default 6-stage net needs multiples of 32.
    tiny = network_cost(net, crops, side=80)
    default_net = default_nnunet_2d(net.decoder.seg_layers[-1].out_channels)
    default = network_cost(default_net, crops, side=96)
    table = Table(title=f"pipeline speed, 2-core CPU, {args.cases} cases / {images} images")
    table.add_column("stage")
    table.add_column("s per image (mean)", justify="right")
    table.add_column("max", justify="right")
    for s in STAGES:
        table.add_row(s, f"{np.mean(per_image[s]):.4f}", f"{np.max(per_image[s]):.4f}")
    table.add_row("", "", "")
    params = sum(p.numel() for p in net.parameters()) / 1e6
    dparams = sum(p.numel() for p in default_net.parameters()) / 1e6
    table.add_row(f"network only: bundled tiny nnU-Net ({params:.1f} M)", f"{tiny:.4f}", "")
    table.add_row(f"network only: default nnU-Net 2D ({dparams:.1f} M)", f"{default:.4f}", "")
    table.add_row("published LGE-CMRnet (GPU, reported)", "0.05", "")
    console = Console()
    console.print(table)
    console.print(
        f"peak RSS: {peak_rss_mb():.0f} MB (before models {rss_before:.0f} MB, "
        f"after loading models {rss_models:.0f} MB)"
    )
    print(
        json.dumps(
            {
                "per_image": {s: float(np.mean(v)) for s, v in per_image.items()},
                "tiny_net_s": tiny,
                "default_net_s": default,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
