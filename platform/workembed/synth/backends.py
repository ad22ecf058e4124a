"""Generation backends: prompts dataset → the same rows with the model's output, whichever engine runs it.

A backend is registered by name in :data:`BACKENDS`: a function of the :class:`SynthConfig` that returns a
Ray Data transformation. Its input rows are prompt rows (``prompt_id``, ``prompt`` as plain text,
``messages`` in chat format, and the lineage fields); its output rows keep every input column and add
:data:`OUTPUT_COLUMNS`:

- ``generated_text``: the decoded output (special tokens skipped), null when inference failed;
- ``__inference_error__``: null, or ``ExceptionType: message`` when the engine failed on the row (a prompt
  of ``engine.max_model_len`` tokens or more, for instance): one bad row never stops the run;
- ``num_input_tokens`` / ``num_generated_tokens``: prompt tokens and generated tokens (0 on error).

Both backends send the same tokens: the tokenizer's chat template over ``messages`` (with the generation
prompt) when the tokenizer has one, else the plain ``prompt``; the text is tokenized as vLLM's processor
does (``tokenizer(text)``). Sampling uses ``temperature``, ``top_p`` (no top-k) and ``max_tokens``, with the
per-prompt seed :meth:`SamplingConfig.row_seed`; temperature 0 decodes greedily.

- ``vllm``: :func:`ray.data.llm.build_processor` with a :class:`vLLMEngineProcessorConfig` (chat template,
  tokenize, engine and detokenize stages; ``should_continue_on_error``; per-row ``sampling_params``). On CPU
  the engine's placement group asks for CPUs only, ``VLLM_CPU_KVCACHE_SPACE`` sizes its KV cache and
  chunked prefill is off (:func:`cpu_engine_kwargs`: seeded sampling needs it).
- ``transformers``: ``AutoModelForCausalLM.generate`` in a Ray Data actor pool, one prompt at a time (so
  that a row's output depends on its seed only), with vLLM's length rule: a prompt of ``max_model_len``
  tokens or more is an error and generation stops at ``max_model_len`` tokens in all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from workembed.errors import ConfigError

if TYPE_CHECKING:
    from ray.data import Dataset

    from workembed.synth.config import SynthConfig

Transform = Callable[["Dataset"], "Dataset"]
OUTPUT_COLUMNS = ("generated_text", "__inference_error__", "num_input_tokens", "num_generated_tokens")
OUTPUT_FIELDS = [
    pa.field("generated_text", pa.string()),
    pa.field("__inference_error__", pa.string()),
    pa.field("num_input_tokens", pa.int64()),
    pa.field("num_generated_tokens", pa.int64()),
]
_PROMPT_COPY = "__synth_prompt__"  # the plain prompt, kept aside while the vLLM stages reuse `prompt`


class PromptTooLongError(ConfigError):
    """A prompt that leaves no room in the engine's context (``max_model_len``) for a generated token."""


def has_chat_template(model: str) -> bool:
    """Whether the model's tokenizer defines a chat template (then prompts are sent as ``messages``)."""
    from transformers import AutoTokenizer

    return bool(getattr(AutoTokenizer.from_pretrained(model), "chat_template", None))


def sampling_params(config: SynthConfig, prompt_id: str) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields of one prompt (tokens only: the detokenize stage makes the text)."""
    sampling = config.sampling
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.row_seed(prompt_id),
        "detokenize": False,
    }


# ------------------------------------------------------------------------------------------------ vLLM


def vllm_backend(config: SynthConfig) -> Transform:
    """The ``ray.data.llm`` vLLM processor of ``config``, with its output cut to the common schema."""
    from ray.data.llm import build_processor

    processor = build_processor(
        vllm_processor_config(config),
        preprocess=_VllmRequest(config),
        postprocess=_keep_row,
    )

    def transform(prompts: Dataset) -> Dataset:
        schema = prompts.schema()
        prompt_schema = pa.schema(list(zip(schema.names, schema.types, strict=True)))
        return processor(prompts).map_batches(
            _vllm_output, fn_kwargs={"prompt_schema": prompt_schema}, batch_format="pyarrow"
        )

    return transform


def vllm_processor_config(config: SynthConfig):
    """The :class:`vLLMEngineProcessorConfig` of ``config`` (one engine per ``tensor_parallel_size`` GPUs,
    or a CPU engine)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine = config.engine
    bundle: dict[str, float] = {"CPU": engine.num_cpus}
    if engine.num_gpus:
        bundle["GPU"] = engine.num_gpus
    engine_kwargs = {
        "tensor_parallel_size": engine.tensor_parallel_size,
        "max_model_len": engine.max_model_len,
        "dtype": engine.dtype,
        "enforce_eager": engine.enforce_eager,
        **(cpu_engine_kwargs(engine.max_model_len) if not engine.num_gpus else {}),
        **engine.engine_kwargs,
        # Per-request stats stay off: they add a struct column to the processor's rows that the rows the
        # engine failed on lack, and Ray Data cannot concatenate a block of failed rows with the others.
        "disable_log_stats": True,
    }
    cpu_stage = {"num_cpus": engine.tokenizer_num_cpus}
    return vLLMEngineProcessorConfig(
        model_source=config.model,
        engine_kwargs=engine_kwargs,
        batch_size=engine.batch_size,
        concurrency=engine.concurrency,
        accelerator_type=engine.accelerator_type,
        placement_group_config={
            "bundles": [dict(bundle) for _ in range(engine.tensor_parallel_size)],
            "strategy": "PACK",
        },
        runtime_env=(
            None if engine.num_gpus else {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": str(engine.kv_cache_gib)}}
        ),
        chat_template_stage={"enabled": has_chat_template(config.model), **cpu_stage},
        tokenize_stage=cpu_stage,
        detokenize_stage=cpu_stage,
        should_continue_on_error=True,
        log_engine_metrics=False,
    )


def cpu_engine_kwargs(max_model_len: int) -> dict[str, Any]:
    """Scheduler settings of a CPU engine: whole prompts are prefilled in one step.

    With chunked prefill, a prompt cut across steps has the token sampled at its first step thrown away and
    its seeded generator rewound, which torch's CPU generators cannot do: the vLLM CPU engine then dies on
    the first seeded request (any temperature above 0) that the scheduler cuts. Without chunked prefill the
    step budget must hold the longest prompt.
    """
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 4096)}


class _VllmRequest:
    """The processor's preprocess: per-row sampling parameters; the plain prompt kept aside."""

    def __init__(self, config: SynthConfig):
        self.config = config

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            _PROMPT_COPY: row["prompt"],
            "sampling_params": sampling_params(self.config, row["prompt_id"]),
        }


def _keep_row(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's postprocess: every field, as its failed rows keep them (equal columns throughout)."""
    return row


def _vllm_output(batch: pa.Table, prompt_schema: pa.Schema) -> pa.Table:
    """The prompt columns as they came in (their types too: a column null throughout a batch comes out of
    the processor typed null), plus :data:`OUTPUT_COLUMNS` (failed rows: text null)."""
    error = [message or None for message in batch.column("__inference_error__").to_pylist()]
    text = [
        None if failed else generated
        for generated, failed in zip(batch.column("generated_text").to_pylist(), error, strict=True)
    ]
    kept = {
        field.name: batch.column(_PROMPT_COPY if field.name == "prompt" else field.name).cast(field.type)
        for field in prompt_schema
    }
    outputs = {
        "generated_text": text,
        "__inference_error__": error,
        "num_input_tokens": batch.column("num_input_tokens").to_pylist(),
        "num_generated_tokens": batch.column("num_generated_tokens").to_pylist(),
    }
    table = pa.table(kept)
    for field in OUTPUT_FIELDS:
        table = table.append_column(field, pa.array(outputs[field.name], type=field.type))
    return table


# ---------------------------------------------------------------------------------------- transformers


def transformers_backend(config: SynthConfig) -> Transform:
    """Hugging Face ``generate`` in an actor pool of ``engine.concurrency`` actors."""
    engine = config.engine

    def transform(prompts: Dataset) -> Dataset:
        return prompts.map_batches(
            TransformersGenerator,
            fn_constructor_kwargs={
                "model": config.model,
                "sampling": config.sampling.model_dump(),
                "max_model_len": engine.max_model_len,
                "dtype": engine.dtype,
                "device": engine.device,
                "chat": has_chat_template(config.model),
            },
            batch_size=engine.batch_size,
            batch_format="pyarrow",
            concurrency=engine.concurrency,
            num_cpus=engine.num_cpus,
            num_gpus=engine.num_gpus or None,
            accelerator_type=engine.accelerator_type,
        )

    return transform


class TransformersGenerator:
    """Ray Data actor: one causal LM; generates each row of a batch with the row's seed."""

    def __init__(
        self,
        model: str,
        sampling: dict[str, Any],
        max_model_len: int,
        dtype: str = "auto",
        device: str = "cpu",
        chat: bool = True,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from workembed.synth.config import SamplingConfig

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        self.sampling = SamplingConfig.model_validate(sampling)
        self.max_model_len = max_model_len
        self.device = device
        self.chat = chat

    def __call__(self, batch: pa.Table) -> pa.Table:
        outputs: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
        for row in batch.to_pylist():
            try:
                text, n_in, n_out, error = *self.generate(row), None
            except Exception as err:  # a failed row is reported, never fatal to the run
                text, n_in, n_out, error = None, 0, 0, f"{type(err).__name__}: {err}"
            for name, value in zip(OUTPUT_COLUMNS, (text, error, n_in, n_out), strict=True):
                outputs[name].append(value)
        for field in OUTPUT_FIELDS:
            batch = batch.append_column(field, pa.array(outputs[field.name], type=field.type))
        return batch

    def prompt_ids(self, row: dict[str, Any]) -> list[int]:
        """The prompt's token ids, as the vLLM processor makes them."""
        text = (
            self.tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
            if self.chat
            else row["prompt"]
        )
        return self.tokenizer(text)["input_ids"]

    def generate(self, row: dict[str, Any]) -> tuple[str, int, int]:
        """``(text, prompt tokens, generated tokens)`` of one prompt row."""
        import torch

        ids = self.prompt_ids(row)
        if len(ids) >= self.max_model_len:  # as vLLM: at least one generated token must fit
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens: max_model_len {self.max_model_len} leaves no room to "
                "generate"
            )
        sampling = self.sampling
        options: dict[str, Any] = {
            "max_new_tokens": min(sampling.max_tokens, self.max_model_len - len(ids)),
            "pad_token_id": (
                self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else self.tokenizer.eos_token_id
            ),
        }
        if sampling.temperature == 0:
            options |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        else:
            options |= {
                "do_sample": True,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": 0,
            }
            torch.manual_seed(sampling.row_seed(row["prompt_id"]))
        inputs = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            output = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), **options)
        generated = output[0, len(ids) :].tolist()
        return self.tokenizer.decode(generated, skip_special_tokens=True), len(ids), len(generated)


BACKENDS: dict[str, Callable[[SynthConfig], Transform]] = {
    "vllm": vllm_backend,
    "transformers": transformers_backend,
}
"""Backend name → builder of its Ray Data transformation (``SynthConfig.backend`` picks one)."""


def generate(config: SynthConfig, prompts: Dataset) -> Dataset:
    """Run the configured backend over a prompts dataset (lazy)."""
    return BACKENDS[config.backend](config)(prompts)
