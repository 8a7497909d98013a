"""Training stages: data, the training loop and its callbacks, evaluation, finetune, distill."""
