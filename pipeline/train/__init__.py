"""Training stages: data, the one training loop, checkpoints, evaluation, finetune, distill."""
