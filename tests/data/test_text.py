"""Per-record text functions: HTML to text, cleaning, sentence splitting, language detection."""

from __future__ import annotations

import pickle
import re

import pytest

from workembed.data.text import (
    LanguageDetector,
    clean_text,
    html_to_text,
    looks_like_html,
    split_sentences,
)

EN = "We are looking for an experienced data engineer to join our growing analytics team in London."
FR = (
    "Nous recherchons un développeur expérimenté pour rejoindre notre équipe technique basée à Lyon "
    "dès que possible."
)
DE = (
    "Wir suchen eine engagierte Pflegefachkraft in Vollzeit für unser modernes Krankenhaus im Herzen "
    "von München."
)
PL = (
    "Poszukujemy doświadczonego programisty do naszego zespołu w Warszawie, oferujemy umowę o pracę "
    "i elastyczne godziny."
)


# --- HTML -----------------------------------------------------------------------------------------


def test_looks_like_html():
    assert looks_like_html("<b>Python</b>")
    assert looks_like_html("Tom &amp; Jerry")
    assert looks_like_html("line<br/>break")
    assert not looks_like_html("R&D team, salary < 50k & bonus > 5%")
    assert not looks_like_html("")


def test_html_lists_and_paragraphs_become_lines():
    html = "<ul><li>Python</li><li>SQL</li></ul><p>We offer&nbsp;a pension&amp;more</p>"
    assert html_to_text(html) == "* Python\n* SQL\n\nWe offer a pension&more"
    assert html_to_text("<div>Line one<br>Line two<p>Para &eacute;t&#233;</p></div>") == (
        "Line one\nLine two\n\nPara été"
    )


def test_plain_text_unchanged():
    text = "  R&D team\n\n- salary < 50k  "
    assert html_to_text(text) is text


# --- cleaning -------------------------------------------------------------------------------------


def test_clean_text_fixes_mojibake():
    assert clean_text("ProjektaktivitÃ¤ten") == "Projektaktivitäten"
    assert clean_text("Das Team wird unterstÃ¼tzt.") == "Das Team wird unterstützt."


def test_clean_text_normalises_unicode_to_nfc():
    assert clean_text("Cafe\u0301 Mu\u0308nchen") == "Caf\u00e9 M\u00fcnchen"


def test_clean_text_whitespace():
    raw = "  Wir  bieten:\t\t Gehalt \n\n\n\n\n - Urlaub\u00a0\u00a0und\u200b Bonus  \r\n  \n\n\nEnde  "
    assert clean_text(raw) == "Wir bieten: Gehalt\n\n- Urlaub und Bonus\n\nEnde"
    assert clean_text("   \n\t ") == ""


# --- sentences ------------------------------------------------------------------------------------


def test_split_bullet_list_inline_and_per_line():
    text = "Your skills: • Python programming • SQL databases\n•Docker and Kubernetes\n▪ Terraform on AWS"
    assert split_sentences(text) == [
        "Your skills:",
        "Python programming",
        "SQL databases",
        "Docker and Kubernetes",
        "Terraform on AWS",
    ]


def test_split_hyphen_and_star_list():
    text = "- Python programming\n  -  SQL databases\n* Docker and Kubernetes\n– Terraform on AWS"
    assert split_sentences(text) == [
        "Python programming",
        "SQL databases",
        "Docker and Kubernetes",
        "Terraform on AWS",
    ]


def test_split_numbered_list():
    text = "1. Python programming\n2) SQL databases\na) Docker and Kubernetes\n(b) Terraform on AWS"
    assert split_sentences(text) == [
        "Python programming",
        "SQL databases",
        "Docker and Kubernetes",
        "Terraform on AWS",
    ]


def test_split_line_broken_requirements_without_punctuation():
    text = "Requirements\nDegree in computer science\nThree years of experience\nFluent English and German"
    assert split_sentences(text) == [
        "Requirements",
        "Degree in computer science",
        "Three years of experience",
        "Fluent English and German",
    ]


def test_split_glued_sentences():
    text = "Join our small and friendly team.Also a chance to be on the Board. Skills in Node.JS needed."
    assert split_sentences(text) == [
        "Join our small and friendly team.",
        "Also a chance to be on the Board.",
        "Skills in Node.JS needed.",
    ]
    assert split_sentences("We started in 2019.Today we employ 284.000 people.") == [
        "We started in 2019.",
        "Today we employ 284.000 people.",
    ]


def test_split_paragraph_into_sentences():
    text = "We are a growing company in Berlin. You will build data pipelines for our customers!"
    assert split_sentences(text) == [
        "We are a growing company in Berlin.",
        "You will build data pipelines for our customers!",
    ]


def test_split_keeps_dashes_and_middle_dots_inside_text():
    text = "PwC steht für Vielfalt – bei den Aufgaben.\nNous cherchons des salarié·e·s · Paris et Lyon"
    assert split_sentences(text) == [
        "PwC steht für Vielfalt – bei den Aufgaben.",
        "Nous cherchons des salarié·e·s",
        "Paris et Lyon",
    ]


def test_split_long_line_at_whitespace():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    assert split_sentences(text, min_chars=1, max_chars=20) == [
        "alpha beta gamma",
        "delta epsilon zeta",
        "eta theta",
    ]
    # A single word longer than the bound is never cut.
    assert split_sentences("x" * 30 + " and more", min_chars=1, max_chars=20) == ["x" * 30, "and more"]
    long = " ".join(["word"] * 400)
    pieces = split_sentences(long)
    assert all(len(p) <= 600 for p in pieces)
    assert " ".join(pieces) == long


def test_split_drops_short_fragments():
    text = "ok\nyes • no\n- CV\n3.\nThis line is long enough.\n\n   \n"
    assert split_sentences(text) == ["This line is long enough."]
    assert split_sentences("Short one.", min_chars=5) == ["Short one."]
    assert split_sentences("") == []


def test_split_collapses_inner_whitespace_and_is_deterministic():
    text = "We  offer\ta   pension scheme.   And   free lunch every day."
    expected = ["We offer a pension scheme.", "And free lunch every day."]
    assert split_sentences(text) == expected
    assert split_sentences(text) == expected


# --- language detection ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


@pytest.mark.parametrize(("text", "code"), [(EN, "en"), (FR, "fr"), (DE, "de"), (PL, "pl")])
def test_detect_languages(detector, text, code):
    assert detector.detect(text) == code


def test_detect_short_or_empty_is_none(detector):
    assert detector.detect("") is None
    assert detector.detect("Python, SQL") is None
    assert detector.detect("12345 67890 !!! ... 2024-01-01 €€€ 99") is None


def test_detect_many_keeps_positions(detector):
    assert detector.detect_many([EN, "", DE, "SQL", PL, FR]) == ["en", None, "de", None, "pl", "fr"]
    assert detector.detect_many(["", "too short"]) == [None, None]
    assert detector.detect_many([]) == []


def test_detect_below_confidence_is_none():
    strict = LanguageDetector(["en", "de"], min_confidence=1.01)
    assert strict.detect(EN) is None
    assert strict.detect_many([EN, DE]) == [None, None]


def test_detect_uses_only_configured_languages():
    assert LanguageDetector(["EN", " de "]).languages == ("en", "de")
    assert LanguageDetector(["en", "fr"]).detect(PL) in {"en", "fr", None}


def test_detector_pickles_before_and_after_use():
    det = LanguageDetector(["en", "fr", "de", "pl"], min_confidence=0.6)
    before = pickle.dumps(det)
    assert det.detect(FR) == "fr"
    after = pickle.dumps(det)
    assert before == after
    assert len(after) < 1000
    clone = pickle.loads(after)
    assert clone.languages == ("en", "fr", "de", "pl")
    assert clone.min_confidence == 0.6
    assert clone._detector is None
    assert clone.detect(DE) == "de"


def test_unknown_language_code_raises():
    with pytest.raises(ValueError, match="'xx'"):
        LanguageDetector(["en", "xx"])
    with pytest.raises(ValueError, match="at least two"):
        LanguageDetector(["en"])


# --- real ads -------------------------------------------------------------------------------------

_STOPWORDS = {
    "en": {"the", "and", "to", "of", "we", "you", "for", "with", "our", "is", "are", "in"},
    "fr": {"le", "la", "les", "et", "des", "de", "du", "vous", "nous", "pour", "une", "est"},
    "de": {"der", "die", "das", "und", "wir", "sie", "für", "mit", "ist", "ein", "eine", "zu"},
}


def _stopword_language(text: str) -> str:
    """An independent, crude reference label: the language whose stopwords occur most often."""
    words = re.findall(r"\w+", text.lower())
    return max(_STOPWORDS, key=lambda code: sum(word in _STOPWORDS[code] for word in words))


def _read_ads(data_dir, name: str, n: int = 50) -> list[str]:
    import pandas as pd

    path = data_dir / "job_ads" / name
    if name.endswith(".parquet"):
        column = pd.read_parquet(path, columns=["description_text"])["description_text"]
    elif name.endswith(".jsonl"):
        column = pd.read_json(path, lines=True, nrows=n)["description"]
    else:
        column = pd.read_csv(path, nrows=n)["jobDescription"]
    return [clean_text(html_to_text(str(text))) for text in column.fillna("").head(n)]


@pytest.mark.parametrize(
    ("name", "code", "min_share"),
    # de_jobs_site4 is a German job board, but about a quarter of its ads are written in English.
    [
        ("nhs_uk_en.parquet", "en", 0.9),
        ("france_travail_fr.jsonl", "fr", 0.9),
        ("de_jobs_site4.csv", "de", 0.6),
    ],
)
def test_real_ads(data_dir, detector, name, code, min_share):
    ads = _read_ads(data_dir, name)
    assert len(ads) == 50
    detected = detector.detect_many(ads)
    assert detected == [detector.detect(ad) for ad in ads]
    assert sum(d == code for d in detected) >= min_share * len(ads)
    labelled = [(d, _stopword_language(ad)) for d, ad in zip(detected, ads, strict=True) if d is not None]
    assert sum(d == ref for d, ref in labelled) >= 0.9 * len(labelled)
    for ad in ads:
        if sum(ch.isalpha() for ch in ad) >= 20:
            assert split_sentences(ad), ad[:200]
