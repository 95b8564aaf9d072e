"""The one place that turns the experiment dataclasses into a DeepSpeed config dict."""

from __future__ import annotations

from bertmt.config import ExperimentConfig


def build_deepspeed_config(cfg: ExperimentConfig, world_size: int) -> dict:
    """DeepSpeed config for ``cfg``. The micro-batch size is nominal: each task has its own batch size, and
    DeepSpeed only uses it for throughput accounting."""
    train = cfg.train
    micro = max(t.batch_size for t in cfg.tasks.values())
    # surgery at ZeRO 0/1 accumulates per-task gradients itself and calls engine.step once per optimiser step;
    # at ZeRO 2/3 DeepSpeed accumulates as in plain training (engine/surgery.py)
    accum = 1 if cfg.mtl.per_task and train.zero_stage < 2 else train.grad_accum
    ds: dict = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,  # always written: DeepSpeed defaults an absent key to 1.0
        "zero_optimization": {"stage": train.zero_stage},
        "steps_per_print": 10**9,  # bertmt logs itself
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,  # client torch.optim.AdamW (nothing compiled)
    }
    if train.zero_stage == 3:  # the best model is saved as one consolidated state dict
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    if train.precision == "fp16":
        ds["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": train.initial_scale_power,
            "loss_scale_window": train.loss_scale_window,
            "hysteresis": train.loss_scale_hysteresis,
            "min_loss_scale": 1,
        }
    elif train.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    return ds
