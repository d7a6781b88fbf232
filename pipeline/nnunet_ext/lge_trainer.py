"""nnU-Net trainer for the bundled demo model: few, short epochs so it trains on 2 CPU cores.

This folder is on ``nnUNet_extTrainer`` (set by `pipeline.runtime.prepare`), which is how
nnU-Net finds the class both when training and when loading the model for inference.
Environment ``LGE_NODE_NNUNET_EPOCHS`` / ``LGE_NODE_NNUNET_ITERS`` shorten it further
(the CI smoke test trains for one tiny epoch).
"""

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_LGEDemo(nnUNetTrainer):
    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cpu"),  # noqa: B008
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("LGE_NODE_NNUNET_EPOCHS", "200"))
        self.num_iterations_per_epoch = int(os.environ.get("LGE_NODE_NNUNET_ITERS", "50"))
        self.num_val_iterations_per_epoch = max(1, self.num_iterations_per_epoch // 10)
        self.save_every = 10
