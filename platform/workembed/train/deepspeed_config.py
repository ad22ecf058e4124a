"""The DeepSpeed JSON config, generated from the typed training config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workembed.train.config import TrainConfig

NEVER_PRINT = 10**9


def deepspeed_config(config: TrainConfig) -> dict[str, Any]:
    """ZeRO stage, precision and clipping of ``config``; the optimizer and schedule are built by
    :func:`optimizer` and :func:`lr_factor` and handed to ``deepspeed.initialize``.

    One optimizer step per logical batch: ``gradient_accumulation_steps`` is 1 and gradient caching makes
    the whole per-worker batch one step (see :mod:`workembed.train.grad_cache`).
    """
    speed = config.deepspeed
    zero: dict[str, Any] = {"stage": speed.zero_stage}
    if speed.offload_optimizer and speed.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": config.scaling.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": config.local_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.batch_size,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": speed.precision == "bf16"},
        "fp16": {"enabled": speed.precision == "fp16"},
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
    }


def optimizer(parameters, config: TrainConfig):
    """AdamW over ``parameters`` with the configured learning rate, betas and weight decay."""
    import torch

    optim = config.optim
    return torch.optim.AdamW(
        parameters, lr=optim.lr, betas=optim.betas, eps=1e-8, weight_decay=optim.weight_decay
    )


def lr_factor(config: TrainConfig) -> Callable[[int], float]:
    """The learning-rate multiplier of optimizer step ``s`` (0-based): ``s / W`` during the ``W`` warm-up
    steps, then 1 (constant) or ``(T − s) / (T − W)`` (linear decay to 0 at the last of ``T`` steps)."""
    warmup, total, linear = config.optim.warmup_steps, config.steps, config.optim.schedule == "linear"

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        if not linear:
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor
