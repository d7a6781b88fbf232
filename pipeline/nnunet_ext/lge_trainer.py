"""nnU-Net trainer for the bundled demo model: few, short epochs so it trains on 2 CPU cores.

This folder is on ``nnUNet_extTrainer`` (set by `pipeline.runtime.prepare`), which is how
nnU-Net finds the class both when training and when loading the model for inference.
Environment ``LGE_NODE_NNUNET_EPOCHS`` / ``LGE_NODE_NNUNET_ITERS`` shorten it further
(the CI smoke test trains for one tiny epoch). ``LGE_NODE_NNUNET_INIT`` names a checkpoint
whose network weights a fresh run starts from (a warm restart of the learning-rate
schedule: `train-demo --nnunet-restart-epochs`); nnU-Net's own ``pretrained_weights``
would re-initialise the output layers, which a restart on the same task must keep.
"""

import os

import numpy as np
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

    def on_train_start(self) -> None:
        super().on_train_start()
        init = os.environ.get("LGE_NODE_NNUNET_INIT")
        if init and self.current_epoch == 0:  # not when continuing from a checkpoint
            weights = torch.load(init, map_location=self.device, weights_only=False)
            self.network.load_state_dict(weights["network_weights"])
            self.print_to_log_file(f"warm restart from {init}")


class nnUNetTrainer_LGERobust(nnUNetTrainer_LGEDemo):
    """The demo trainer made robust to appearance shift (the shipped model's trainer).

    - Heavier and wider intensity/appearance augmentation than nnU-Net's default: contrast,
      brightness and gamma, Gaussian and Rician noise, blur, sharpening, simulated lower
      resolution, smooth bias fields (additive brightness gradients, local gamma and local
      contrast), tissue-to-tissue contrast (blood vs scar, myocardium not nulled, MVO) and
      PSIR -> magnitude folding; more scaling (anisotropic too) and rotation.
    - Label-noise robustness: besides nnU-Net's Dice + CE on the hard labels, a KL term
      against soft targets whose boundaries are blurred by a random 0.5-1.2 pixels (where
      a border lies is uncertain by about a pixel in LGE; the model should not be
      penalised for hedging there). Weight ``LGE_NODE_KL_WEIGHT`` (default 1).
    """

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cpu"),  # noqa: B008
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.kl_weight = float(os.environ.get("LGE_NODE_KL_WEIGHT", "1.0"))

    @staticmethod
    def get_training_transforms(
        patch_size,
        rotation_for_DA,
        deep_supervision_scales,
        mirror_axes,
        do_dummy_2d_data_aug,
        use_mask_for_norm=None,
        is_cascaded=False,
        foreground_labels=None,
        regions=None,
        ignore_label=None,
    ):
        from pipeline.nnunet_ext.augment import robust_training_transforms

        return robust_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes
        )

    def train_step(self, batch: dict) -> dict:
        from pipeline.nnunet_ext.augment import kl_to_soft_targets, soft_targets

        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target]
        self.optimizer.zero_grad(set_to_none=True)
        output = self.network(data)
        loss = self.loss(output, target)
        if self.kl_weight > 0:
            logits = output[0] if isinstance(output, (list, tuple)) else output
            sigma = float(np.random.uniform(0.5, 1.2))
            soft = soft_targets(target[0], logits.shape[1], sigma)
            loss = loss + self.kl_weight * kl_to_soft_targets(logits, soft)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
        self.optimizer.step()
        return {"loss": loss.detach().cpu().numpy()}
