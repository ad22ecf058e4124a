"""``workembed run synthesize``: ESCO-grounded prompts → an LLM through Ray Data → synthetic edges.

1. Prompts are built on the driver (:func:`workembed.synth.templates.build_prompts`) from the taxonomy, the
   skill-sentence edge counts of an ingest run (the long tail) and, optionally, real job titles.
2. A generation backend (:data:`workembed.synth.backends.BACKENDS`: the ``ray.data.llm`` vLLM processor or
   transformers actors) adds the model's output to every prompt row; a failed row carries its
   ``__inference_error__`` instead of stopping the run.
3. A pool of validation actors (:class:`~workembed.synth.validate.SentenceValidator`) turns each output into
   accepted sentences (grounded back to their intended skills) and rejects; one dedupe actor then rejects
   accepted sentences equal to one accepted before anywhere in the run (the validators only see their own).
4. Accepted sentences become edges: ``skill-sentence`` (sentence → each skill it grounds to) and
   ``skill-job`` (title-skills: title → each skill its phrases map to), origin ``synthetic`` (or
   ``synthetic-test`` for a test model, which training never reads), with lineage columns.

Output under ``<output>/<run_id>/`` (local or ``s3://``; opened by :func:`workembed.runs.open_run`: a run
folder that holds files is refused unless ``overwrite``): ``prompts``, ``generations`` (prompt rows +
``generated_text``, ``__inference_error__``, token counts), ``edges`` (:data:`EDGES_SCHEMA`), ``rejects``
(stage, reason, raw, prompt_id, template) and ``summary.json``, where
prompts in = prompts with an accepted sentence + prompts fully rejected, and sentences in (one per parsed
sentence, or one per row that failed before parsing) = accepted + rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from workembed.config import is_uri, resolve_data_path
from workembed.data.graph import EDGE_SCHEMA
from workembed.data.storage import filesystem_for, join, strip_scheme
from workembed.errors import ConfigError, DatasetError
from workembed.runs import open_run, sum_counts
from workembed.synth.config import SamplingConfig, SynthConfig
from workembed.synth.validate import (
    DUPLICATE,
    STAGE,
    ParseError,
    SentenceValidator,
    normalize_text,
    parse_output,
    reason_code,
)

logger = logging.getLogger(__name__)

SENTENCE_TASK, TITLE_TASK = "skill-sentence", "skill-job"
LINEAGE_FIELDS = [
    pa.field("template", pa.string()),
    pa.field("template_version", pa.int64()),
    pa.field("model", pa.string()),
    pa.field("sampling", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("prompt_id", pa.string()),
]
EDGES_SCHEMA = pa.schema([*EDGE_SCHEMA, *LINEAGE_FIELDS])
"""The ``edges`` contract plus lineage: template, template_version, model, sampling (JSON), seed (the
prompt's sampling seed), prompt_id."""
RESULT_SCHEMA = pa.schema(
    [
        ("accepted", pa.bool_()),
        ("sentence", pa.string()),
        ("targets", pa.list_(pa.string())),
        ("kind", pa.string()),
        ("template", pa.string()),
        ("template_version", pa.int64()),
        ("prompt_id", pa.string()),
        ("language", pa.string()),
        ("title", pa.string()),
        ("occupation_uri", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)
"""One validation outcome: an accepted sentence (``accepted``; reason and raw null) or a reject."""
REJECT_COLUMNS = ["stage", "reason", "raw", "prompt_id", "template"]
_ACCEPTED_FIELDS = [name for name in RESULT_SCHEMA.names if name not in ("accepted", "reason", "raw")]


# ---------------------------------------------------------------------------------------- Ray actors


class Validation:
    """Ray Data actor: one :class:`SentenceValidator`; a batch of generations → outcome rows."""

    def __init__(self, validator: SentenceValidator):
        self.validator = validator.warm()

    def __call__(self, batch: pa.Table) -> pa.Table:
        accepted, rejected = self.validator.validate(batch.to_pylist())
        rows = [{"accepted": True, **{name: row.get(name) for name in _ACCEPTED_FIELDS}} for row in accepted]
        for reject in rejected:
            raw = json.loads(reject["raw"])
            rows.append(
                {
                    "accepted": False,
                    "prompt_id": raw.get("prompt_id"),
                    "template": raw.get("template"),
                    "template_version": raw.get("template_version"),
                    "sentence": raw.get("sentence"),
                    "reason": reject["reason"],
                    "raw": reject["raw"],
                }
            )
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


class GlobalDedupe:
    """Ray Data actor (exactly one): an accepted sentence equal to one accepted earlier in the run becomes a
    ``duplicate`` reject. Equal means the validators' key: the normalised sentence, or for title-skills
    phrases the title and the skills the phrase maps to."""

    def __init__(self):
        self.seen: set[bytes] = set()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            if not row["accepted"]:
                continue
            key = hashlib.sha256(json.dumps(dedupe_key(row)).encode("utf-8")).digest()
            if key in self.seen:
                raw = {name: row[name] for name in _ACCEPTED_FIELDS}
                row |= {"accepted": False, "reason": DUPLICATE, "raw": json.dumps(raw, ensure_ascii=False)}
            else:
                self.seen.add(key)
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def dedupe_key(row: Mapping[str, Any]) -> list:
    """Two accepted rows are duplicates when their keys are equal (as in the validator)."""
    if row["kind"] == "title-skills":
        owner = row.get("title") or row.get("occupation_uri") or row.get("prompt_id")
        return ["phrase", owner, list(row["targets"])]
    return ["sentence", normalize_text(row["sentence"])]


# -------------------------------------------------------------------------------------- batch functions


def sentence_id(sentence: str) -> str:
    """The ``left_id`` of a synthetic sentence: 16 hex digits of SHA-256 of its normalised text."""
    return "synthetic:" + hashlib.sha256(normalize_text(sentence).encode("utf-8")).hexdigest()[:16]


def title_id(title: str) -> str:
    """The ``left_id`` of a real job title without an ESCO occupation."""
    return "title:" + hashlib.sha256(" ".join(title.casefold().split()).encode("utf-8")).hexdigest()[:16]


def edges_of(
    batch: pa.Table, labels: Mapping[str, str], model: str, sampling: dict[str, Any], origin: str
) -> pa.Table:
    """The edges of the accepted rows of a batch of outcomes (one per target skill)."""
    settings = SamplingConfig.model_validate(sampling)
    lineage_sampling = settings.lineage()
    edges = []
    for row in batch.filter(batch["accepted"]).to_pylist():
        if row["kind"] == "title-skills":
            task, left_id, left_text = (
                TITLE_TASK,
                row["occupation_uri"] or title_id(row["title"]),
                row["title"],
            )
        else:
            task, left_id, left_text = SENTENCE_TASK, sentence_id(row["sentence"]), row["sentence"]
        for uri in row["targets"]:
            edges.append(
                {
                    "task": task,
                    "left_id": left_id,
                    "left_text": left_text,
                    "right_id": uri,
                    "right_text": labels[uri],
                    "weight": 1.0,
                    "origin": origin,
                    "template": row["template"],
                    "template_version": row["template_version"],
                    "model": model,
                    "sampling": lineage_sampling,
                    "seed": settings.row_seed(row["prompt_id"]),
                    "prompt_id": row["prompt_id"],
                }
            )
    return pa.Table.from_pylist(edges, schema=EDGES_SCHEMA)


def merge_titles(config: SynthConfig, edges) -> pa.Table | None:
    """Edges from each real title of ``config.merge_titles.titles`` to the skills of its most similar
    generated title (cosine ≥ ``min_similarity``; weight = the cosine; the source edge's lineage kept);
    None without real titles or generated title edges."""
    settings = config.merge_titles
    if settings.titles is None:
        return None
    from ray.data.expressions import col

    title_edges = edges.filter(expr=col("task") == TITLE_TASK).take_all()
    if not title_edges:
        logger.info("merge_titles: no title-skills edges to carry over")
        return None
    from workembed.models import Encoder

    generated = sorted({row["left_text"] for row in title_edges})
    real = read_title_column(config, settings.titles)
    encoder = config.validation.encoder
    model = Encoder(
        encoder.model, batch_size=encoder.batch_size, max_length=encoder.max_length, device=encoder.device
    )
    similarity = model.embed(real) @ model.embed(generated).T if real else None
    by_title: dict[str, list[dict]] = {}
    for row in title_edges:
        by_title.setdefault(row["left_text"], []).append(row)
    merged = []
    for index, title in enumerate(real):
        best = int(similarity[index].argmax())
        score = float(similarity[index, best])
        if score < settings.min_similarity or title.casefold() == generated[best].casefold():
            continue
        for row in by_title[generated[best]]:
            merged.append({**row, "left_id": title_id(title), "left_text": title, "weight": round(score, 6)})
    logger.info(
        "merge_titles: %d edges for real titles similar to %d generated titles", len(merged), len(generated)
    )
    return pa.Table.from_pylist(merged, schema=EDGES_SCHEMA)


def rejects_of(batch: pa.Table) -> pa.Table:
    """The rejects of a batch of outcomes, in the rejects contract (+ prompt_id, template)."""
    rejected = batch.filter(pc.invert(batch["accepted"]))
    stage = pa.array([STAGE] * rejected.num_rows, type=pa.string())
    return pa.table(
        [stage, rejected["reason"], rejected["raw"], rejected["prompt_id"], rejected["template"]],
        names=REJECT_COLUMNS,
    )


def generation_tally(batch: pa.Table) -> pa.Table:
    """Per-batch counters of the generations: rows, errors, tokens, and sentences in (what validation
    receives: each parsed sentence, or one item for a row that failed or does not parse)."""
    counts = {"rows": 0, "inference_errors": 0, "tokens_in": 0, "tokens_out": 0, "sentences_in": 0}
    for row in batch.select(
        [
            "generated_text",
            "__inference_error__",
            "output",
            "n_sentences",
            "num_input_tokens",
            "num_generated_tokens",
        ]
    ).to_pylist():
        counts["rows"] += 1
        counts["tokens_in"] += row["num_input_tokens"]
        counts["tokens_out"] += row["num_generated_tokens"]
        if row["__inference_error__"]:
            counts["inference_errors"] += 1
            counts["sentences_in"] += 1
            continue
        try:
            counts["sentences_in"] += len(
                parse_output(row["generated_text"] or "", row["output"], row["n_sentences"])
            )
        except ParseError:
            counts["sentences_in"] += 1
    return pa.table({"counts": [json.dumps(counts)]})


def outcome_tally(batch: pa.Table) -> pa.Table:
    """Per-batch counters of the outcomes: per template accepted and rejected (by reason code), and per
    prompt its template and its accepted and rejected outcomes."""
    templates: dict[str, dict[str, int]] = {}
    prompts: dict[str, list[int]] = {}
    for row in batch.select(["accepted", "template", "prompt_id", "reason"]).to_pylist():
        key = "accepted" if row["accepted"] else reason_code(row["reason"])
        counts = templates.setdefault(row["template"], {})
        counts[key] = counts.get(key, 0) + 1
        prompts.setdefault(row["prompt_id"], [row["template"], 0, 0])[1 if row["accepted"] else 2] += 1
    return pa.table({"templates": [json.dumps(templates)], "prompts": [json.dumps(prompts)]})


def edge_tally(batch: pa.Table) -> pa.Table:
    """Per-batch edge counts by task."""
    counts = {row["values"]: row["counts"] for row in pc.value_counts(batch["task"]).to_pylist()}
    return pa.table({"tasks": [json.dumps(counts)]})


# ------------------------------------------------------------------------------------------- the stage


def run_synthesize(config: SynthConfig) -> dict[str, Any]:
    """Generate, validate and write synthetic edges; returns the summary (also written as JSON)."""
    import ray
    from ray.data import ActorPoolStrategy

    from workembed.synth.backends import generate
    from workembed.synth.templates import build_prompts
    from workembed.taxonomy import load_esco_config

    started = time.perf_counter()
    model = resolve_model(config.model)
    if model != config.model:
        config = config.model_copy(update={"model": model})
    check_model(model)
    run = open_run(
        config.output, config.run_id, "synthesize", overwrite=config.overwrite, storage=config.storage
    )
    run_id, out, fs = run.run_id, run.path, run.filesystem

    taxonomy = load_esco_config(config.esco)
    prompt_rows = build_prompts(taxonomy, config.prompts, read_edge_counts(config), read_titles(config))
    if not prompt_rows:
        raise ConfigError(
            "no prompts were built: no skill is under prompts.long_tail.edge_threshold and the other "
            "templates gave none (raise the threshold or enable another template)"
        )
    by_template: dict[str, int] = {}
    for row in prompt_rows:
        by_template[row["template"]] = by_template.get(row["template"], 0) + 1
    logger.info(
        "synthesize %s: %d prompts %s, backend %s, model %s → %s",
        run_id,
        len(prompt_rows),
        by_template,
        config.backend,
        model,
        out,
    )

    config.ray.connect()
    prompts = ray.data.from_arrow(prompt_table(prompt_rows)).repartition(
        target_num_rows_per_block=config.engine.batch_size
    )
    prompts.write_parquet(join(out, "prompts"), filesystem=fs)

    generation_started = time.perf_counter()
    generations = generate(config, prompts).materialize()
    generation_seconds = time.perf_counter() - generation_started
    generations.write_parquet(join(out, "generations"), filesystem=fs)
    gen = sum_counts(generations.map_batches(generation_tally, batch_format="pyarrow").take_all(), "counts")
    logger.info(
        "generated %d rows in %.1f s (%d inference errors, %d tokens in, %d out)",
        gen["rows"],
        generation_seconds,
        gen["inference_errors"],
        gen["tokens_in"],
        gen["tokens_out"],
    )

    validator = SentenceValidator.from_taxonomy(taxonomy, config.validation)
    if config.validation.grounding != "lexical" and config.validation.cache_dir is not None:
        validator.warm()  # label embeddings computed once here; the actors read them from the cache
    outcomes = (
        generations.map_batches(
            Validation,
            fn_constructor_kwargs={"validator": validator},
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=config.validation_actors),
            num_cpus=config.validation_num_cpus,
            num_gpus=config.validation_num_gpus or None,
        )
        .map_batches(GlobalDedupe, batch_format="pyarrow", compute=ActorPoolStrategy(size=1), num_cpus=0.25)
        .materialize()
    )
    labels = {uri: skill.preferred_label for uri, skill in taxonomy.skills.items()}
    edges = outcomes.map_batches(
        edges_of,
        fn_kwargs={
            "labels": labels,
            "model": model,
            "sampling": config.sampling.model_dump(),
            "origin": config.origin,
        },
        batch_format="pyarrow",
    ).materialize()
    merged = merge_titles(config, edges)
    if merged is not None:
        edges = edges.union(ray.data.from_arrow(merged)).materialize()
    write_table_dataset(edges, join(out, "edges"), EDGES_SCHEMA, fs)
    rejects = outcomes.map_batches(rejects_of, batch_format="pyarrow")
    write_table_dataset(rejects, join(out, "rejects"), rejects_schema(), fs)

    summary = {
        "run_id": run_id,
        "output": out,
        "backend": config.backend,
        "model": model,
        "test_model": config.test_model,
        "origin": config.origin,
        "esco": taxonomy.source,
        "sampling": config.sampling.model_dump(),
        **build_summary(len(prompt_rows), by_template, gen, generation_seconds, outcomes, edges),
        "seconds": round(time.perf_counter() - started, 1),
    }
    run.write_summary(summary)
    logger.info(
        "synthesize: %d prompts, %d sentences accepted, %d rejected %s, edges %s (%s s)",
        summary["prompts"]["in"],
        summary["sentences"]["accepted"],
        summary["sentences"]["rejected"],
        summary["rejected"],
        summary["edges"],
        summary["seconds"],
    )
    return summary


def build_summary(
    prompts_in: int,
    by_template: dict[str, int],
    gen: dict[str, int],
    generation_seconds: float,
    outcomes,
    edges,
) -> dict[str, Any]:
    """The counts and balances of a run (see the module docstring)."""
    templates: dict[str, dict[str, int]] = {}
    per_prompt: dict[str, list] = {}  # prompt id → [template, accepted, rejected]
    for tally in outcomes.map_batches(outcome_tally, batch_format="pyarrow").take_all():
        for template, counts in json.loads(tally["templates"]).items():
            merged = templates.setdefault(template, {})
            for key, value in counts.items():
                merged[key] = merged.get(key, 0) + value
        for prompt, (template, accepted, rejected) in json.loads(tally["prompts"]).items():
            entry = per_prompt.setdefault(prompt, [template, 0, 0])
            entry[1] += accepted
            entry[2] += rejected
    reasons: dict[str, int] = {}
    for counts in templates.values():
        for key, value in counts.items():
            if key != "accepted":
                reasons[key] = reasons.get(key, 0) + value
    accepted, rejected = sum(c.get("accepted", 0) for c in templates.values()), sum(reasons.values())
    with_accepted = sum(1 for _, a, _ in per_prompt.values() if a)
    fully_rejected = sum(1 for _, a, r in per_prompt.values() if not a and r)
    per_template = {}
    for template, n_prompts in sorted(by_template.items()):
        counts = templates.get(template, {})
        kept, total = counts.get("accepted", 0), sum(counts.values())
        per_template[template] = {
            "prompts": n_prompts,
            "prompts_with_accepted": sum(1 for t, a, _ in per_prompt.values() if t == template and a),
            "accepted": kept,
            "rejected": total - kept,
            "acceptance_rate": round(kept / total, 4) if total else 0.0,
            "rejected_by_reason": {k: v for k, v in sorted(counts.items()) if k != "accepted"},
        }
    edge_counts = sum_counts(edges.map_batches(edge_tally, batch_format="pyarrow").take_all(), "tasks")
    prompts_balanced = prompts_in == with_accepted + fully_rejected == len(per_prompt)
    sentences_balanced = gen["sentences_in"] == accepted + rejected
    return {
        "prompts": {
            "in": prompts_in,
            "with_accepted": with_accepted,
            "fully_rejected": fully_rejected,
            "balanced": prompts_balanced,
        },
        "generations": {
            "rows": gen["rows"],
            "inference_errors": gen["inference_errors"],
            "tokens_in": gen["tokens_in"],
            "tokens_out": gen["tokens_out"],
            "seconds": round(generation_seconds, 2),
            "rows_per_s": round(gen["rows"] / generation_seconds, 3),
            "output_tokens_per_s": round(gen["tokens_out"] / generation_seconds, 2),
        },
        "sentences": {
            "in": gen["sentences_in"],
            "accepted": accepted,
            "rejected": rejected,
            "balanced": sentences_balanced,
        },
        "rejected": dict(sorted(reasons.items())),
        "templates": per_template,
        "edges": dict(sorted(edge_counts.items())),
        "balanced": gen["rows"] == prompts_in and prompts_balanced and sentences_balanced,
    }


# --------------------------------------------------------------------------------------------- helpers


def check_model(model: str) -> None:
    """Fail before any work when the model's tokenizer cannot be loaded (a wrong path or id)."""
    from workembed.synth.backends import has_chat_template

    try:
        has_chat_template(model)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model: cannot load the tokenizer of '{model}' (give an LLM folder or a Hugging Face id): {err}"
        ) from None


def resolve_model(model: str) -> str:
    """A local model folder as an absolute path (the workers' working directory differs); ids unchanged."""
    path = Path(model).expanduser()
    return str(path.resolve()) if not is_uri(model) and path.exists() else model


def read_edge_counts(config: SynthConfig) -> dict[str, int] | None:
    """Skill URI → skill-sentence edges of the configured ingest run (None without one)."""
    import pyarrow.dataset as pads

    from workembed.synth.templates import skill_sentence_counts

    if config.skill_edge_counts is None:
        return None
    location = resolve_data_path(config.skill_edge_counts)
    fs = filesystem_for(location, config.storage)
    table = pads.dataset(strip_scheme(location), filesystem=fs, format="parquet").to_table(
        columns=["skill_uri", "task", "origin", "count"]
    )
    return skill_sentence_counts(table.to_pylist())


def read_titles(config: SynthConfig) -> list[str] | None:
    """The distinct non-empty titles of the configured titles dataset, sorted (None without one)."""
    return None if config.titles is None else read_title_column(config, config.titles)


def read_title_column(config: SynthConfig, setting: str) -> list[str]:
    """The distinct non-empty values of the ``title`` column of the Parquet dataset ``setting``, sorted."""
    import ray

    location = resolve_data_path(setting)
    config.ray.connect()
    dataset = ray.data.read_parquet(location, filesystem=filesystem_for(location, config.storage))
    if "title" not in dataset.schema().names:
        raise DatasetError(f"titles: {location} has no 'title' column (columns: {dataset.schema().names})")
    titles = dataset.select_columns(["title"]).unique("title")
    return sorted(title for title in titles if title and title.strip())


def prompt_table(rows: list[dict]) -> pa.Table:
    """The prompt rows as one table; columns that are null throughout (e.g. no titles) typed as strings."""
    table = pa.Table.from_pylist(rows)
    for index, field in enumerate(table.schema):
        if pa.types.is_null(field.type):
            table = table.set_column(index, field.name, table.column(index).cast(pa.string()))
    return table


def rejects_schema() -> pa.Schema:
    return pa.schema([(name, pa.string()) for name in REJECT_COLUMNS])


def write_table_dataset(dataset, location: str, schema: pa.Schema, fs) -> None:
    """Write a dataset as Parquet; an empty one as a single empty file of ``schema`` (readers find the
    folder and its columns either way)."""
    import pyarrow.parquet as pq

    if dataset.count():
        dataset.write_parquet(location, filesystem=fs)
        return
    fs.create_dir(strip_scheme(location))
    pq.write_table(schema.empty_table(), strip_scheme(join(location, "empty.parquet")), filesystem=fs)
