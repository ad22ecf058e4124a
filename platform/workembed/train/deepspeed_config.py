"""The DeepSpeed JSON config, generated from the typed training config."""

from __future__ import annotations

from typing import Any

from workembed.train.config import TrainConfig

NEVER_PRINT = 10**9


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    """ZeRO stage, precision, clipping, AdamW and the warm-up schedule of ``config``.

    One optimizer step per logical batch: ``gradient_accumulation_steps`` is 1 and gradient caching makes
    the whole per-worker batch one step (see :mod:`workembed.train.grad_cache`).
    """
    optim, speed = config.optim, config.deepspeed
    warmup = max(1, min(optim.warmup_steps, config.steps))
    scheduler: dict[str, Any] = {
        "warmup_min_lr": 0.0,
        "warmup_max_lr": optim.lr,
        "warmup_num_steps": warmup,
        "warmup_type": "linear",
    }
    if optim.schedule == "linear":
        scheduler["total_num_steps"] = max(config.steps, warmup + 1)
    zero: dict[str, Any] = {"stage": speed.zero_stage}
    if speed.offload_optimizer and speed.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": config.scaling.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": config.local_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.batch_size,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": speed.precision == "bf16"},
        "fp16": {"enabled": speed.precision == "fp16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": 1e-8,
                "weight_decay": optim.weight_decay,
                "torch_adam": True,
            },
        },
        "scheduler": {
            "type": "WarmupDecayLR" if optim.schedule == "linear" else "WarmupLR",
            "params": scheduler,
        },
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
    }
