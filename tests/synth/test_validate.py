"""Validation of generated text on hand-written outputs: parsing, every reject reason, grounding modes."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from workembed.synth.validate import (
    ParseError,
    SentenceValidator,
    ValidationConfig,
    contains_label,
    copies_prompt,
    normalize_text,
    parse_output,
    reason_code,
)


@dataclass(frozen=True)
class Spec:
    kind: str
    output: str


TEMPLATES = {
    "long-tail": Spec("sentences", "json"),
    "multi-skill": Spec("multi", "lines"),
    "title-skills": Spec("title-skills", "json"),
}
SKILLS = {
    "python": "Python (computer programming)",
    "sql": "SQL",
    "pm": "project management",
    "budgets": "manage budgets",
    "contracts": "negotiate contracts",
    "service": "customer service",
    "forklift": "operate forklift",
    "welding": "welding techniques",
    "bookkeeping": "bookkeeping",
    "maths": "teach mathematics",
    "trucks": "drive trucks",
    "first-aid": "provide first aid",
    "bread": "bake bread",
    "ml": "machine learning",
    "spreadsheets": "use spreadsheets software",
    "french": "speak French",
    "trees": "prune trees",
    "roofs": "repair roofs",
    "interviews": "conduct job interviews",
    "wiring": "install electrical wiring",
}
LABELS = {f"skill/{key}": label for key, label in SKILLS.items()}
ALT_LABELS = {
    "skill/forklift": ["forklift operation"],
    "skill/trucks": ["drive lorries"],
    "skill/bookkeeping": ["keep financial accounts"],
}
FORKLIFT_PROMPT = (
    "Write 7 job-ad requirement sentences that need the skill 'operate forklift'. "
    "Description: Use forklifts to move goods safely around a warehouse. Do not name the skill."
)


def generated(
    prompt_id: str,
    template: str,
    targets: list[str],
    text: str | None,
    *,
    forbid_label: bool = True,
    n_sentences: int = 10,
    prompt: str = "Write job-ad requirement sentences.",
    title: str | None = None,
    error: str | None = None,
) -> dict:
    """A generated row: the prompt-row fields plus generated_text and __inference_error__."""
    return {
        "prompt_id": prompt_id,
        "template": template,
        "template_version": 1,
        "language": "en",
        "messages": [{"role": "user", "content": prompt}],
        "prompt": prompt,
        "targets": [f"skill/{t}" for t in targets],
        "target_labels": [SKILLS[t] for t in targets],
        "forbid_label": forbid_label,
        "n_sentences": n_sentences,
        "title": title,
        "occupation_uri": None,
        "seed": 7,
        "generated_text": text,
        "__inference_error__": error,
    }


def outcomes(accepted: list[dict], rejected: list[dict]) -> tuple[list, list]:
    """(prompt_id, sentence, targets) per accepted row; (prompt_id, sentence or None, reason) per reject."""
    kept = sorted((a["prompt_id"], a["sentence"], tuple(a["targets"])) for a in accepted)
    failed = []
    for reject in rejected:
        assert reject["stage"] == "synthesize"
        raw = json.loads(reject["raw"])
        failed.append((raw["prompt_id"], raw.get("sentence"), reason_code(reject["reason"])))
    return kept, sorted(failed, key=lambda item: (item[0], item[1] or "", item[2]))


# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "output", "expected"),
    [
        ('{"sentences": ["First one.", "Second  one."]}', "json", ["First one.", "Second one."]),
        ('  ["Only a list."]\n', "json", ["Only a list."]),
        ('```json\n{"sentences": ["Fenced."], "note": "ignored"}\n```', "json", ["Fenced."]),
        ('\n```\n["Plain fence."]\n```  ', "json", ["Plain fence."]),
        (
            "- Dash line.\n\n1. Numbered line.\n2) Other number.\n• Bullet line.\nBare line.",
            "lines",
            ["Dash line.", "Numbered line.", "Other number.", "Bullet line.", "Bare line."],
        ),
        ("  3.5 years of experience are needed.  ", "lines", ["3.5 years of experience are needed."]),
    ],
)
def test_parse_output_accepts_the_formats(text, output, expected):
    assert parse_output(text, output, n_expected=5) == expected


@pytest.mark.parametrize(
    ("text", "output", "message"),
    [
        ("   ", "json", "empty output"),
        ("", "lines", "empty output"),
        ("\n- \n  \n", "lines", "no sentence lines"),
        ("Here are the sentences: one, two.", "json", "not JSON"),
        ('{"sentences": ["a",', "json", "not JSON"),
        ('{"items": ["a"]}', "json", "without a 'sentences' key"),
        ('{"sentences": "a sentence"}', "json", "got str"),
        ("42", "json", "got int"),
        ("[]", "json", "empty sentence list"),
        ('["fine", 3]', "json", "item 2 is int"),
        ('["fine", "  "]', "json", "item 2 is empty"),
        ('["a", "b", "c"]', "json", "expected at most 2 sentences, got 3"),
        ("a\nb\nc", "lines", "expected at most 2 sentences, got 3"),
    ],
)
def test_parse_output_rejects_with_a_reason(text, output, message):
    with pytest.raises(ParseError, match=message):
        parse_output(text, output, n_expected=2)


def test_parse_output_without_an_expected_count_keeps_every_sentence():
    assert parse_output("a\nb\nc", "lines", None) == ["a", "b", "c"]


def test_text_checks():
    assert normalize_text("  Python, SQL & C++!  ") == "python sql c"
    prompt = "Description: Use forklifts to move goods safely around a warehouse."
    assert copies_prompt("use forklifts to move goods safely", prompt, 0.8)
    assert not copies_prompt(
        "forklifts to move", "we use forklifts to moveable goods", 0.8
    )  # not whole words
    # 3 of the 4 word 4-grams of the sentence occur in the prompt: a copy at 0.75, not at 0.8
    assert copies_prompt("Use forklifts to move goods safely now.", prompt, 0.75)
    assert not copies_prompt("Use forklifts to move goods safely now.", prompt, 0.8)
    assert not copies_prompt("Move goods", "Description: none", 0.1)  # under 4 words: verbatim only
    assert contains_label("You must OPERATE  forklift trucks.", ["operate forklift"])
    assert not contains_label("Operate forklifts daily.", ["operate forklift"])
    assert contains_label("Knowledge of C++ is needed.", ["C++"])
    assert not contains_label("Knowledge of SQLite is needed.", ["SQL"])


def test_config_bounds_are_validated():
    with pytest.raises(ValidationError, match="max_chars"):
        ValidationConfig(min_chars=50, max_chars=40)
    with pytest.raises(ValidationError, match="phrase_max_chars"):
        ValidationConfig(phrase_min_chars=10, phrase_max_chars=5)
    with pytest.raises(ValidationError, match="grounding"):
        ValidationConfig(grounding="fuzzy")


# ---------------------------------------------------------------------------------------- lexical mode


def lexical_validator(**settings) -> SentenceValidator:
    config = ValidationConfig(grounding="lexical", min_chars=20, max_chars=120, **settings)
    return SentenceValidator(LABELS, config, ALT_LABELS, TEMPLATES)


def lexical_rows() -> list[dict]:
    forklift = generated(
        "p-forklift",
        "long-tail",
        ["forklift"],
        json.dumps(
            {
                "sentences": [
                    "Experience in forklift operation is required for this warehouse role.",
                    "You must operate forklift trucks safely in our warehouse.",
                    "Use forklifts to move goods safely around a warehouse.",
                    "Short one.",
                    "Forklift operation " * 8,
                    "We offer a friendly team and a modern office in the city.",
                    "Experience in forklift operation is required for this warehouse role!",
                ]
            }
        ),
        prompt=FORKLIFT_PROMPT,
    )
    forklift["targets"] = np.array(forklift["targets"])  # as a Ray batch holds list columns
    return [
        forklift,
        generated("p-error", "long-tail", ["sql"], None, error="engine died"),
        generated("p-parse", "long-tail", ["sql"], "Sure! Here are the sentences you asked for."),
        generated("p-empty", "long-tail", ["sql"], None),
        generated(
            "p-multi",
            "multi-skill",
            ["pm", "budgets", "contracts"],
            "1. Lead project management and manage budgets for client programmes.\n"
            "2. Negotiate contracts with suppliers as part of daily project management.\n"
            "3. You will manage budgets across several departments.",
            forbid_label=False,
        ),
        generated(
            "p-title",
            "title-skills",
            [],
            '```json\n["Operate forklift", "drive lorries", "keep financial accounts.", "juggling", '
            '"forklift operation", "x"]\n```',
            title="warehouse operative",
        ),
        generated(
            "p-title-2",
            "title-skills",
            [],
            '["operate forklift"]',
            title="forklift driver",
        ),
        generated("p-none", "long-tail", ["bread"], '["Short.", "Nothing to do with baking at all here."]'),
    ]


def test_lexical_validation_every_reason_and_exact_targets():
    validator = lexical_validator()
    rows = lexical_rows()
    accepted, rejected = validator.validate(rows)
    kept, failed = outcomes(accepted, rejected)
    assert kept == [
        (
            "p-forklift",
            "Experience in forklift operation is required for this warehouse role.",
            ("skill/forklift",),
        ),
        (
            "p-multi",
            "Lead project management and manage budgets for client programmes.",
            ("skill/pm", "skill/budgets"),
        ),
        (
            "p-multi",
            "Negotiate contracts with suppliers as part of daily project management.",
            ("skill/pm", "skill/contracts"),
        ),
        ("p-title", "Operate forklift", ("skill/forklift",)),
        ("p-title", "drive lorries", ("skill/trucks",)),
        ("p-title", "keep financial accounts.", ("skill/bookkeeping",)),
        ("p-title-2", "operate forklift", ("skill/forklift",)),  # same skill, another title: kept
    ]
    long = " ".join(("Forklift operation " * 8).split())
    assert failed == [
        ("p-empty", None, "parse_error"),
        ("p-error", None, "inference_error"),
        (
            "p-forklift",
            "Experience in forklift operation is required for this warehouse role!",
            "duplicate",
        ),
        ("p-forklift", long, "too_long"),
        ("p-forklift", "Short one.", "too_short"),
        ("p-forklift", "Use forklifts to move goods safely around a warehouse.", "copies_prompt"),
        ("p-forklift", "We offer a friendly team and a modern office in the city.", "not_grounded"),
        ("p-forklift", "You must operate forklift trucks safely in our warehouse.", "contains_label"),
        ("p-multi", "You will manage budgets across several departments.", "not_grounded"),
        ("p-none", "Nothing to do with baking at all here.", "not_grounded"),
        ("p-none", "Short.", "too_short"),
        ("p-parse", None, "parse_error"),
        ("p-title", "forklift operation", "duplicate"),  # same title, same skill as "Operate forklift"
        ("p-title", "juggling", "not_grounded"),
        ("p-title", "x", "too_short"),
    ]
    reasons = {reason_code(r["reason"]): r["reason"] for r in rejected}
    assert set(reasons) == {
        "inference_error",
        "parse_error",
        "too_short",
        "too_long",
        "copies_prompt",
        "contains_label",
        "not_grounded",
        "duplicate",
    }
    assert reasons["inference_error"] == "inference_error: engine died"
    by_prompt = {json.loads(r["raw"])["prompt_id"]: r["reason"] for r in rejected}
    assert by_prompt["p-parse"].startswith("parse_error: not JSON")
    assert by_prompt["p-empty"] == "parse_error: empty output"

    # a failed row's raw is the row itself; a failed sentence's raw holds the row fields and the sentence
    row_raw = json.loads(next(r["raw"] for r in rejected if r["reason"].startswith("inference_error")))
    assert row_raw["generated_text"] is None and row_raw["messages"][0]["content"] == rows[1]["prompt"]
    sentence_raw = json.loads(next(r["raw"] for r in rejected if r["reason"] == "contains_label"))
    assert sentence_raw["targets"] == ["skill/forklift"] and "prompt" not in sentence_raw

    title_row = next(a for a in accepted if a["prompt_id"] == "p-title")
    assert title_row == {
        "sentence": "Operate forklift",
        "targets": ["skill/forklift"],
        "kind": "title-skills",
        "template": "title-skills",
        "template_version": 1,
        "prompt_id": "p-title",
        "language": "en",
        "title": "warehouse operative",
        "occupation_uri": None,
        "seed": 7,
    }
    assert {a["kind"] for a in accepted if a["prompt_id"] == "p-multi"} == {"multi"}


def test_counts_balance():
    validator = lexical_validator()
    rows = lexical_rows()
    accepted, rejected = validator.validate(rows)
    ids = {row["prompt_id"] for row in rows}
    with_accepted = {a["prompt_id"] for a in accepted}
    reject_ids = {json.loads(r["raw"])["prompt_id"] for r in rejected}
    fully_rejected = reject_ids - with_accepted
    assert with_accepted == {"p-forklift", "p-multi", "p-title", "p-title-2"}
    assert fully_rejected == {"p-error", "p-parse", "p-empty", "p-none"}
    assert len(ids) == len(with_accepted) + len(fully_rejected)

    sentences_in = 0
    for row in rows:
        if row["__inference_error__"] is None:
            try:
                sentences_in += len(
                    parse_output(row["generated_text"] or "", TEMPLATES[row["template"]].output, 10)
                )
            except ParseError:
                pass
    sentence_rejects = [r for r in rejected if "sentence" in json.loads(r["raw"])]
    row_rejects = [r for r in rejected if "sentence" not in json.loads(r["raw"])]
    assert sentences_in == 7 + 3 + 6 + 1 + 2
    assert sentences_in == len(accepted) + len(sentence_rejects)
    assert len(row_rejects) == 3  # inference error, parse error, empty output
    assert Counter(reason_code(r["reason"]) for r in row_rejects) == {"parse_error": 2, "inference_error": 1}


def test_duplicates_across_calls_and_within_a_batch():
    validator = lexical_validator()
    sentence = "Experience in forklift operation is required for this warehouse role."
    first, _ = validator.validate([generated("a", "long-tail", ["forklift"], json.dumps([sentence]))])
    assert [a["sentence"] for a in first] == [sentence]
    again = generated("b", "long-tail", ["forklift"], json.dumps([sentence.upper(), sentence + " Now."]))
    accepted, rejected = validator.validate([again])
    assert [a["sentence"] for a in accepted] == [sentence + " Now."]
    assert [(json.loads(r["raw"])["sentence"], r["reason"]) for r in rejected] == [
        (sentence.upper(), "duplicate")
    ]


def test_a_sentence_failing_one_prompt_does_not_block_it_for_another():
    """Only accepted sentences count as seen: a sentence not grounded for one skill is kept for another."""
    validator = lexical_validator()
    sentence = "Experience in forklift operation is required for this warehouse role."
    rows = [
        generated("sql", "long-tail", ["sql"], json.dumps([sentence])),
        generated("forklift", "long-tail", ["forklift"], json.dumps([sentence])),
    ]
    accepted, rejected = validator.validate(rows)
    assert [(a["prompt_id"], a["targets"]) for a in accepted] == [("forklift", ["skill/forklift"])]
    assert [(json.loads(r["raw"])["prompt_id"], r["reason"]) for r in rejected] == [("sql", "not_grounded")]


def test_multi_min_grounded_is_configurable():
    row = generated(
        "m",
        "multi-skill",
        ["pm", "budgets", "contracts"],
        "You will manage budgets across several departments.",
        forbid_label=False,
    )
    accepted, rejected = lexical_validator(multi_min_grounded=1).validate([row])
    assert [a["targets"] for a in accepted] == [["skill/budgets"]] and rejected == []
    all_three = generated(
        "m3",
        "multi-skill",
        ["pm", "budgets", "contracts"],
        "Lead project management and manage budgets for client programmes.",
        forbid_label=False,
    )
    accepted, rejected = lexical_validator(multi_min_grounded=3).validate([all_three])
    assert accepted == [] and [r["reason"] for r in rejected] == ["not_grounded"]


def test_bad_rows_are_errors_that_name_the_row():
    validator = lexical_validator()
    with pytest.raises(ValueError, match="'p1'.*unknown template 'nope'"):
        validator.validate([generated("p1", "nope", ["sql"], '["SQL queries are written daily here."]')])
    with pytest.raises(ValueError, match="'p2'.*has no targets"):
        validator.validate([generated("p2", "long-tail", [], '["SQL queries are written daily here."]')])
    with pytest.raises(ValueError, match="taxonomy_labels is empty"):
        SentenceValidator({}, ValidationConfig(), templates=TEMPLATES)


def test_lexical_validator_pickles_with_its_state():
    validator = lexical_validator().warm()
    sentence = "Experience in forklift operation is required for this warehouse role."
    validator.validate([generated("a", "long-tail", ["forklift"], json.dumps([sentence]))])
    copy = pickle.loads(pickle.dumps(validator))
    accepted, rejected = copy.validate([generated("b", "long-tail", ["forklift"], json.dumps([sentence]))])
    assert accepted == [] and [r["reason"] for r in rejected] == ["duplicate"]
    fresh = lexical_validator()
    assert pickle.loads(pickle.dumps(fresh)).validate(lexical_rows()) == fresh.validate(lexical_rows())


# ------------------------------------------------------------------------------------------ dense mode


def dense_rows() -> list[dict]:
    return [
        generated(
            "d-forklift",
            "long-tail",
            ["forklift"],
            '["Experience with forklift operation in a busy warehouse is required."]',
        ),
        generated(
            "d-books",
            "long-tail",
            ["bookkeeping"],
            '["Candidates must keep financial accounts for the family shop accurately."]',
        ),
        generated("d-ml", "long-tail", ["ml"], '["You will train neural network models on large datasets."]'),
        generated(
            "d-multi",
            "multi-skill",
            ["pm", "budgets"],
            "Plan projects, set milestones and keep the project budget under control.",
            forbid_label=False,
        ),
        generated(
            "d-title",
            "title-skills",
            [],
            '["python programming", "cost control", "forklift driving"]',
            title="developer",
        ),
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("label-embeddings")


@pytest.fixture(scope="module")
def dense_validator(cache_dir) -> SentenceValidator:
    config = ValidationConfig(grounding="dense", dense_top_k=3, dense_min_score=0.4, cache_dir=str(cache_dir))
    return SentenceValidator(LABELS, config, ALT_LABELS, TEMPLATES).warm()


def test_dense_grounding(dense_validator):
    accepted, rejected = pickle.loads(pickle.dumps(dense_validator)).validate(dense_rows())
    kept, failed = outcomes(accepted, rejected)
    assert kept == [
        (
            "d-forklift",
            "Experience with forklift operation in a busy warehouse is required.",
            ("skill/forklift",),
        ),
        ("d-ml", "You will train neural network models on large datasets.", ("skill/ml",)),
        (
            "d-multi",
            "Plan projects, set milestones and keep the project budget under control.",
            ("skill/pm", "skill/budgets"),
        ),
        ("d-title", "forklift driving", ("skill/forklift",)),
        ("d-title", "python programming", ("skill/python",)),
    ]
    # cosine 0.30 with "bookkeeping" (< 0.4); "cost control" is closest to "manage budgets" at 0.52 (< 0.6)
    assert failed == [
        (
            "d-books",
            "Candidates must keep financial accounts for the family shop accurately.",
            "not_grounded",
        ),
        ("d-title", "cost control", "not_grounded"),
    ]


def test_dense_top_k_and_either_mode(dense_validator, cache_dir):
    top_1 = pickle.loads(pickle.dumps(dense_validator))
    top_1.config = top_1.config.model_copy(update={"dense_top_k": 1, "phrase_min_score": 0.5})
    accepted, rejected = top_1.validate(dense_rows())
    kept, failed = outcomes(accepted, rejected)
    # "manage budgets" (0.614) ranks second to "project management" (0.628): one of two targets is too few
    assert (
        "d-multi",
        "Plan projects, set milestones and keep the project budget under control.",
        "not_grounded",
    ) in (failed)
    assert ("d-title", "cost control", ("skill/budgets",)) in kept  # 0.52 ≥ 0.5

    either = SentenceValidator(
        LABELS,
        ValidationConfig(grounding="either", dense_top_k=3, cache_dir=str(cache_dir)),
        ALT_LABELS,
        TEMPLATES,
    )
    accepted, rejected = either.validate(dense_rows())
    kept, failed = outcomes(accepted, rejected)
    assert (  # the alternative label "keep financial accounts" grounds it lexically
        "d-books",
        "Candidates must keep financial accounts for the family shop accurately.",
        ("skill/bookkeeping",),
    ) in kept
    assert len(kept) == 6 and failed == [("d-title", "cost control", "not_grounded")]


def test_dense_validator_pickles_without_its_models(dense_validator):
    """What a Ray actor receives: the labels and settings, not the encoder or embeddings (rebuilt lazily)."""
    payload = pickle.dumps(dense_validator)
    assert len(payload) < 200_000  # the encoder alone is ~90 MB
    first = pickle.loads(payload).validate(dense_rows())
    second = pickle.loads(payload).validate(dense_rows())
    assert first == second and len(first[0]) == 5


def test_from_taxonomy_grounds_to_esco_labels():
    from workembed.taxonomy import load_esco

    taxonomy = load_esco("builtin")
    skill = taxonomy.skills["http://data.europa.eu/esco/skill/0121ac3b-775b-4faf-b86d-0078623674bc"]
    row = generated(
        "t", "title-skills", [], '["Develop terminology databases", "compile terminology databases"]'
    )
    row["title"] = "terminologist"
    with_alt = SentenceValidator.from_taxonomy(
        taxonomy, ValidationConfig(grounding="lexical"), templates=TEMPLATES
    )
    accepted, rejected = with_alt.validate([row])
    assert [(a["sentence"], a["targets"]) for a in accepted] == [
        ("Develop terminology databases", [skill.uri])
    ]
    assert [r["reason"] for r in rejected] == ["duplicate"]  # the alternative label maps to the same skill
    preferred_only = SentenceValidator.from_taxonomy(
        taxonomy, ValidationConfig(grounding="lexical"), alt_labels=False, templates=TEMPLATES
    )
    accepted, rejected = preferred_only.validate([row])
    assert [a["sentence"] for a in accepted] == ["Develop terminology databases"]
    assert [r["reason"] for r in rejected] == ["not_grounded"]


def test_default_templates_are_the_registered_ones():
    validator = SentenceValidator(LABELS, ValidationConfig(grounding="lexical"))
    title = generated(
        "t", "title-skills", [], "Operate forklift\nSQL\n", n_sentences=2, title="forklift driver"
    )
    multi = generated(
        "m",
        "multi-skill",
        ["pm", "budgets"],
        "Here is the sentence:\nLead project management and manage budgets for client programmes.",
        n_sentences=1,
    )
    accepted, rejected = validator.validate([title, multi])
    assert [(a["sentence"], a["targets"]) for a in accepted] == [
        ("Operate forklift", ["skill/forklift"]),
        ("SQL", ["skill/sql"]),
    ]
    assert [r["reason"] for r in rejected] == ["parse_error: expected at most 1 sentence, got 2"]
