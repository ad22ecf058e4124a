"""Skill extraction with spans on hand-built token vectors, and job-ad segmentation."""

import numpy as np
import pytest

from workembed.models import TokenEmbeddings
from workembed.models.extraction_settings import ExtractionSettings
from workembed.retrieval.scoring import l2_normalize
from workembed.retrieval.skill_extraction import token_attention_scores
from workembed.serving.spaces import TargetSpace
from workembed.serving.span_extraction import (
    extract_with_spans,
    locate_sentences,
    segment_ad,
    sentence_skills,
    token_runs,
    word_span,
)

SENTENCE = "use pyspark daily"
# content tokens: use | py | ##sp | ##ark | daily
OFFSETS = [(0, 3), (4, 6), (6, 8), (8, 11), (12, 17)]
TOKEN_VECTORS = np.array(
    [[0.1, 0, 1], [0, 1, 0], [1, 0.2, 0], [1, 0.1, 0], [0, 0, 1]], dtype=np.float32
)  # best skills over all: use→routine, py→python, ##sp→spark, ##ark→spark, daily→routine
SKILLS = TargetSpace(
    name="toy",
    ids=("spark", "python", "routine", "pyspark"),
    labels=("Apache Spark", "Python", "daily routine", "PySpark"),
    texts=("spark", "python", "routine", "pyspark"),
)
SKILL_VECTORS = l2_normalize(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32))


def tokens_of(vectors, offsets, words):
    """Encoder output with [CLS] and [SEP] around the content tokens."""
    dim = SKILL_VECTORS.shape[1]
    return TokenEmbeddings(
        tokens=["[CLS]", *words, "[SEP]"],
        offsets=[(0, 0), *offsets, (0, 0)],
        vectors=np.concatenate([np.full((1, dim), 5.0), vectors, np.full((1, dim), -5.0)]).astype(np.float32),
        special=[True, *([False] * len(words)), True],
    )


def cosines():
    return l2_normalize(TOKEN_VECTORS) @ SKILL_VECTORS.T


def test_word_span_widens_to_whole_words():
    assert word_span("use pyspark daily", 4, 6) == (4, 11)
    assert word_span("use pyspark daily", 6, 11) == (4, 11)
    assert word_span("use pyspark daily", 12, 17) == (12, 17)
    assert word_span("C++, Java.", 0, 1) == (0, 1)
    assert word_span("C++, Java.", 5, 7) == (5, 9)


def test_token_runs_are_maximal():
    best = np.array([2, 1, 0, 0, 2])
    assert token_runs(best, 2) == [(0, 0), (4, 4)]
    assert token_runs(best, 0) == [(2, 3)]
    assert token_runs(best, 3) == []


def test_kept_skills_their_scores_and_spans():
    settings = ExtractionSettings(threshold=0.9, temperature=0.01, among="all")
    scores = token_attention_scores(cosines(), 0.01)
    assert scores[3] < 0.9 <= min(scores[:3])  # candidates: spark, python, routine
    found = sentence_skills(SENTENCE, OFFSETS, cosines(), SKILLS, settings)
    assert [skill["id"] for skill in found] == ["python", "routine", "spark"]  # by score, descending
    assert [skill["score"] for skill in found] == pytest.approx([scores[1], scores[2], scores[0]])
    spans = {skill["id"]: skill["spans"] for skill in found}
    assert spans["python"] == [{"start": 4, "end": 11, "text": "pyspark"}]  # "py" widened to its word
    assert spans["spark"] == [{"start": 4, "end": 11, "text": "pyspark"}]  # "##sp ##ark" merged and widened
    assert spans["routine"] == [
        {"start": 0, "end": 3, "text": "use"},
        {"start": 12, "end": 17, "text": "daily"},
    ]
    assert found[0]["label"] == "Python"


def test_redundancy_filter_among_all_or_candidates():
    scores = token_attention_scores(cosines(), 10.0)
    assert [j for j in range(4) if scores[j] >= 0.45] == [3]  # only pyspark is a candidate
    among_all = ExtractionSettings(threshold=0.45, temperature=10.0, among="all")
    assert sentence_skills(SENTENCE, OFFSETS, cosines(), SKILLS, among_all) == []  # no token's best skill
    among_candidates = among_all.model_copy(update={"among": "candidates"})
    found = sentence_skills(SENTENCE, OFFSETS, cosines(), SKILLS, among_candidates)
    assert [(skill["id"], skill["spans"]) for skill in found] == [
        ("pyspark", [{"start": 0, "end": 17, "text": SENTENCE}])  # every token is one run
    ]


def test_blocks_of_sentences_give_the_same_result():
    settings = ExtractionSettings(threshold=0.9, temperature=0.01)
    other = "daily py"
    sentences = [SENTENCE, "", other]
    tokens = [
        tokens_of(TOKEN_VECTORS, OFFSETS, ["use", "py", "##sp", "##ark", "daily"]),
        tokens_of(np.zeros((0, 3)), [], []),
        tokens_of(TOKEN_VECTORS[[4, 1]], [(0, 5), (6, 8)], ["daily", "py"]),
    ]
    one_block = extract_with_spans(sentences, tokens, SKILL_VECTORS, SKILLS, settings)
    assert one_block[0] == sentence_skills(SENTENCE, OFFSETS, cosines(), SKILLS, settings)
    assert one_block[1] == []
    assert [skill["id"] for skill in one_block[2]] == ["python", "routine"]
    assert extract_with_spans(sentences, tokens, SKILL_VECTORS, SKILLS, settings, token_block=1) == one_block
    with pytest.raises(ValueError, match="2 token outputs for 3 sentences"):
        extract_with_spans(sentences, tokens[:2], SKILL_VECTORS, SKILLS, settings)


def test_segment_ad_and_locate_sentences():
    html = "<ul><li>Python &amp; SQL skills</li><li>Team work in Berlin</li></ul>"
    sentences = segment_ad(html)
    assert sentences == ["Python & SQL skills", "Team work in Berlin"]
    start = html.index("Team work in Berlin")
    assert locate_sentences(html, sentences) == [None, (start, start + len("Team work in Berlin"))]
    text = "Work with Python daily.\nWork with Python daily.\n"
    assert locate_sentences(text, ["Work with Python daily.", "Work with Python daily."]) == [
        (0, 23),
        (24, 47),
    ]
    assert locate_sentences("a  b\tc", ["a b c"]) == [(0, 6)]
