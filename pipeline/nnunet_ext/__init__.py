"""Custom nnU-Net trainers (on ``nnUNet_extTrainer``) and their augmentation."""
