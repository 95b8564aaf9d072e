"""Cluster launching: sbatch templates rendered from the config, Submitit submission, sweeps as job arrays,
hostfiles for multi-node deepspeed. Nothing here imports the model, torch or deepspeed: a submit host may have
neither a GPU nor the training stack's heavy dependencies loaded."""
