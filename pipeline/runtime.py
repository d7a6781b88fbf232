"""Process environment for ultralytics and nnU-Net, set before their first import.

Both libraries read environment variables at import time: ultralytics would otherwise try
to download a font and check for updates, nnU-Net would spawn worker processes and
``torch.compile``. Nothing here downloads anything.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import platformdirs

PACKAGE = Path(__file__).resolve().parent
NNUNET_EXT = PACKAGE / "nnunet_ext"  # custom trainers live here
BUNDLED_MODELS = PACKAGE / "demo_models"  # the phantom-trained demo models, in the wheel


def cache_dir() -> Path:
    """Where library caches go: ``LGE_NODE_CACHE_DIR``, else the user's cache folder
    (``~/.cache/lge-node``); never next to the installed package, which may be read-only."""
    path = Path(os.environ.get("LGE_NODE_CACHE_DIR") or platformdirs.user_cache_dir("lge-node"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def yolo_config_dir() -> Path:
    """ultralytics' config dir, holding a font so none is fetched."""
    path = Path(os.environ.get("YOLO_CONFIG_DIR") or cache_dir() / "ultralytics")
    path.mkdir(parents=True, exist_ok=True)
    font = path / "Arial.ttf"
    if not font.exists():
        import matplotlib

        dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copyfile(dejavu, font)
    return path


def prepare(training: bool = False) -> None:
    """Set the environment; call before importing ultralytics or nnunetv2.

    ``nnUNet_n_proc_DA=0`` (augmentation in-process) is only for training and inference:
    nnU-Net's planning step crashes with it (``set_num_threads(0)``).
    """
    # nnU-Net's network code still uses torch.jit.interface; the warning is not ours to fix.
    warnings.filterwarnings("ignore", message=".*torch.jit.interface.*", category=FutureWarning)
    os.environ["YOLO_CONFIG_DIR"] = str(yolo_config_dir())
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_VERBOSE", "0")
    os.environ.setdefault("nnUNet_compile", "f")
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ.setdefault("nnUNet_extTrainer", str(NNUNET_EXT))
    if training:
        os.environ["nnUNet_n_proc_DA"] = "0"
    # nnU-Net warns at import when these are unset; inference passes folders explicitly.
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(name, str(cache_dir() / "nnunet" / name))


def set_threads(n: int | None = None) -> None:
    """ultralytics sets torch to 1 thread on small machines at import; undo that."""
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    # ultralytics' select_device() sets torch back to its own NUM_THREADS (cpu_count - 1,
    # so 1 on 2 cores) at every train and at the first predict, which then slowed the
    # detector and nnU-Net after it; it reads that module constant each time.
    torch_utils = sys.modules.get("ultralytics.utils.torch_utils")
    if torch_utils is not None:
        torch_utils.NUM_THREADS = n  # type: ignore[attr-defined]  # a module from sys.modules
    os.environ["OMP_NUM_THREADS"] = str(n)
    # ultralytics caps numexpr at cpu_count - 1; numexpr (imported later via nnU-Net)
    # prints an "Error." when OMP_NUM_THREADS exceeds that cap.
    os.environ["NUMEXPR_MAX_THREADS"] = str(n)
