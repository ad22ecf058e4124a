"""The training config: validation, the generated DeepSpeed config and the learning-rate schedule."""

import pytest
from pydantic import ValidationError

from workembed.train.config import TrainConfig
from workembed.train.deepspeed_config import deepspeed_config, lr_factor


def config(**fields) -> TrainConfig:
    return TrainConfig.model_validate({"data": {"esco": "builtin"}, **fields})


PROJECTION = {"name": "projection", "sides": {"title": 8, "skill": 8}, "input_sides": {"default": "skill"}}
SIDED = {"data": {"esco": "builtin", "tasks": {"skill-job": {"sides": ["title", "skill"]}}}}


def test_a_projection_head_is_trained_with_the_sides_each_task_names():
    trained = config(model={"head": PROJECTION}, **SIDED)
    assert trained.data.tasks["skill-job"].sides == ("title", "skill")


def test_learning_rate_warms_up_then_decays_linearly_to_zero():
    factor = lr_factor(config(steps=10, optim={"warmup_steps": 4}))
    assert [factor(s) for s in range(10)] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]
    )
    constant = lr_factor(config(steps=10, optim={"warmup_steps": 0, "schedule": "constant"}))
    assert [constant(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]


def test_deepspeed_config_follows_the_typed_config():
    generated = deepspeed_config(
        config(
            batch_size=64, scaling={"num_workers": 4}, deepspeed={"zero_stage": 3, "offload_optimizer": True}
        )
    )
    assert generated["train_batch_size"] == 64
    assert generated["train_micro_batch_size_per_gpu"] == 16
    assert generated["gradient_accumulation_steps"] == 1
    assert generated["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
    }
    assert generated["bf16"] == {"enabled": False} and generated["gradient_clipping"] == 1.0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"batch_size": 63}, "multiple of scaling.num_workers"),
        ({"deepspeed": {"zero_stage": 0}}, "grad_cache needs deepspeed.zero_stage"),
        ({"deepspeed": {"precision": "bf16"}}, "needs scaling.use_gpu"),
        ({"model": {"head": {"name": "section", "num_section_types": 4}}}, "trains on `data.matching`"),
        ({"data": {"esco": "builtin", "matching": {}}}, "drop `edges` and `esco`"),
        ({"data": {"matching": {}}}, "set model.head.name: section"),
        ({"data": {"tasks": {}}, "steps": 1}, "give `edges` datasets|tasks"),
        ({"data": {"esco": "builtin", "tasks": {}}}, "`tasks` is empty"),
        (
            {"data": {"esco": "builtin", "tasks": {"skill-alt": {"sides": ["skill", "skill"]}}}},
            "only a projection head",
        ),
        ({"model": {"head": PROJECTION}}, "needs `sides` for every task; missing: job-alt, skill-alt"),
        (
            {
                "model": {"head": PROJECTION},
                "data": {"esco": "builtin", "tasks": {"x": {"sides": ["a", "b"]}}},
            },
            "sides a, b not in model.head.sides",
        ),
        (
            {"model": {"head": {**PROJECTION, "sides": {"title": 8, "skill": 16}}}, **SIDED},
            "one output dimension",
        ),
        ({"model": {"head": {**PROJECTION, "input_sides": {}}}, **SIDED}, "needs `input_sides`"),
        ({"model": {"head": {**PROJECTION, "input_sides": {"job_title": "job"}}}}, "not in sides"),
    ],
)
def test_invalid_settings_are_named(fields, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig.model_validate({"data": {"esco": "builtin"}, **fields})


def test_a_stage_zero_run_without_gradient_caching_is_valid():
    assert config(deepspeed={"zero_stage": 0}, grad_cache=False).deepspeed.zero_stage == 0
