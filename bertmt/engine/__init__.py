"""Training on the DeepSpeed engine: config generation, the trainer, checkpoints."""
