"""Validation of generated text: parsing, per-sentence checks, grounding back to ESCO, deduplication.

Each generated row (a prompt row plus ``generated_text`` and ``__inference_error__``) becomes accepted
sentences and rejects:

1. ``inference_error: <message>`` when the engine failed on the row; ``parse_error: <why>`` when the output
   is not in the template's format (:func:`parse_output`). Either is one reject for the whole row.
2. Per sentence, the first failing check is its reject reason:

   - ``too_short`` / ``too_long``: outside ``[min_chars, max_chars]`` characters (skill phrases of
     title-skills rows: ``[phrase_min_chars, phrase_max_chars]``);
   - ``copies_prompt``: the sentence repeats the prompt (:func:`copies_prompt`);
   - ``contains_label``: the row forbids it and the sentence contains a target's preferred label
     (:func:`contains_label`);
   - ``not_grounded``: it does not map back to enough of its intended skills (below);
   - ``duplicate``: an equal sentence (:func:`normalize_text`) was already accepted by this validator.

Grounding of a sentence to its intended skills T (``grounding``):

- ``lexical``: a skill is hit when :class:`~workembed.data.lexical.LabelMatcher` over all skill labels
  (preferred and, when given, alternative) finds it in the sentence;
- ``dense``: a skill is hit when it is among the sentence's ``dense_top_k`` skills by cosine
  ŝ · l̂ (ŝ the sentence embedding, l̂ a preferred-label embedding) with a score ≥ ``dense_min_score``;
- ``either``: hit by one or the other.

The sentence is kept when at least min(``multi_min_grounded``, |T|) skills of T are hit (one for a
single-skill row; by default two for a multi-skill row, so that a kept sentence is still a multi-label
positive); its ``targets`` are the hit skills of T, in the row's order.

Title-skills rows list skill phrases for a title: each phrase maps to ESCO on its own, by its exact label
(case- and whitespace-insensitive; a preferred label wins over an alternative one; ``lexical`` and
``either``) or
the top-1 skill by cosine with a score ≥ ``phrase_min_score`` (``dense`` and ``either``, after the exact
label); an accepted row then has ``sentence`` = the phrase and ``targets`` = the skill(s) it maps to. A
phrase is a ``duplicate`` when an earlier phrase of the same title mapped to the same skill(s). Phrases are
not checked for copying the prompt or for containing a label.

Duplicates are found within one validator's lifetime (a Ray Data actor) among the sentences it accepted;
equal sentences accepted by different actors are removed by the stage's global pass over the accepted rows.

Grounding compares with the labels the validator is given (ESCO's English labels by default): sentences in
other languages ground through a multilingual ``encoder`` with dense grounding.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import Field, model_validator

from workembed.config import Config
from workembed.errors import DatasetError, InputError

if TYPE_CHECKING:
    from workembed.data.lexical import LabelMatcher
    from workembed.models import Encoder
    from workembed.taxonomy import Taxonomy

STAGE = "synthesize"
INFERENCE_ERROR = "inference_error"
PARSE_ERROR = "parse_error"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
COPIES_PROMPT = "copies_prompt"
CONTAINS_LABEL = "contains_label"
NOT_GROUNDED = "not_grounded"
DUPLICATE = "duplicate"
COPY_NGRAM = 4
"""Word n-gram size of the prompt-overlap check."""

_FENCE = re.compile(r"^```[A-Za-z]*[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_BULLET = re.compile(r"^(?:[-*•–]|\d{1,3}[.)])(?:\s+|$)")
_NON_WORD = re.compile(r"[\W_]+")
_ROW_TEXT_FIELDS = ("messages", "prompt", "generated_text")


class ParseError(InputError):
    """Generated text that is not in the expected output format; the message says why."""


class TemplateSpec(Protocol):
    """What validation reads from a template: its kind and its output format."""

    kind: str
    output: str


# ---------------------------------------------------------------------------------------------- parsing


def parse_output(text: str, output: Literal["json", "lines"], n_expected: int | None = None) -> list[str]:
    """The sentences of one generated text, whitespace-collapsed.

    ``json``: ``{"sentences": [...]}`` or a bare list of strings, optionally in a Markdown code fence
    (```` ```json ````); other keys of the object are ignored. ``lines``: one sentence per non-empty line, a
    leading bullet (``-``, ``*``, ``•``) or number (``1.``, ``2)``) removed. Raises :class:`ParseError` for
    empty output, invalid JSON, wrong types, an empty item, or more than ``n_expected`` sentences.
    """
    if output not in ("json", "lines"):
        raise ValueError(f"output must be 'json' or 'lines', got {output!r}")
    body = (text or "").strip()
    if not body:
        raise ParseError("empty output")
    if output == "json":
        sentences = _parse_json(body)
    else:
        lines = (_BULLET.sub("", line.strip(), count=1) for line in body.splitlines())
        sentences = [" ".join(line.split()) for line in lines if line.strip()]
        if not sentences:
            raise ParseError("no sentence lines")
    if n_expected is not None and len(sentences) > n_expected:
        noun = "sentence" if n_expected == 1 else "sentences"
        raise ParseError(f"expected at most {n_expected} {noun}, got {len(sentences)}")
    return sentences


def _parse_json(body: str) -> list[str]:
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as err:
        raise ParseError(f"not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if isinstance(value, dict):
        if "sentences" not in value:
            raise ParseError(f"JSON object without a 'sentences' key (keys: {sorted(value)})")
        value = value["sentences"]
    if not isinstance(value, list):
        raise ParseError(f"expected a JSON list of strings, got {type(value).__name__}")
    if not value:
        raise ParseError("empty sentence list")
    sentences = []
    for position, item in enumerate(value, start=1):
        if not isinstance(item, str):
            raise ParseError(f"item {position} is {type(item).__name__}, not a string")
        sentence = " ".join(item.split())
        if not sentence:
            raise ParseError(f"item {position} is empty")
        sentences.append(sentence)
    return sentences


# ------------------------------------------------------------------------------------------ text checks


def normalize_text(text: str) -> str:
    """NFKC, case-folded, every run of non-alphanumeric characters one space, trimmed: the form in which
    sentences are compared for duplicates and prompt copies."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def copies_prompt(sentence: str, prompt: str, overlap: float) -> bool:
    """True when the normalised sentence occurs in the normalised prompt as whole words, or when at least
    ``overlap`` of the sentence's word n-grams (n = :data:`COPY_NGRAM`) occur in the prompt."""
    words, prompt_words = normalize_text(sentence).split(), normalize_text(prompt).split()
    if not words:
        return False
    if f" {' '.join(words)} " in f" {' '.join(prompt_words)} ":
        return True
    grams = _ngrams(words)
    if not grams:
        return False
    seen = set(_ngrams(prompt_words))
    return sum(gram in seen for gram in grams) / len(grams) >= overlap


def _ngrams(words: list[str]) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + COPY_NGRAM]) for i in range(len(words) - COPY_NGRAM + 1)]


def contains_label(sentence: str, labels: Sequence[str]) -> bool:
    """True when one of ``labels`` occurs in ``sentence``: case-insensitive, on word boundaries, any
    whitespace between the label's words."""
    for label in labels:
        words = label.split()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(word) for word in words) + r"(?!\w)"
        if re.search(pattern, sentence, flags=re.IGNORECASE):
            return True
    return False


def _label_key(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".;,")


# ----------------------------------------------------------------------------------------------- config


class GroundingEncoderConfig(Config):
    """The encoder of dense grounding."""

    model: str = Field("minilm", description="'minilm' (packaged all-MiniLM-L6-v2) or a model directory.")
    batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    max_length: int = Field(128, ge=8, description="Tokens per text; longer texts are truncated.")
    device: str = Field("cpu", description="Torch device of the encoder ('cpu', 'cuda').")


class ValidationConfig(Config):
    """How generated sentences are checked and grounded back to their intended skills."""

    min_chars: int = Field(20, ge=1, description="Shorter sentences are rejected (too_short).")
    max_chars: int = Field(300, ge=1, description="Longer sentences are rejected (too_long).")
    phrase_min_chars: int = Field(2, ge=1, description="Shorter skill phrases (title-skills) are too_short.")
    phrase_max_chars: int = Field(100, ge=1, description="Longer skill phrases (title-skills) are too_long.")
    copy_overlap: float = Field(
        0.8,
        gt=0,
        le=1,
        description="A sentence copies the prompt when it occurs in it verbatim (after normalisation) or "
        "when at least this share of its word 4-grams occur in the prompt.",
    )
    grounding: Literal["lexical", "dense", "either"] = Field(
        "dense",
        description="How a sentence must map back to its skills: 'lexical' (a label found in the sentence), "
        "'dense' (among its top-k skills by cosine) or 'either'.",
    )
    dense_top_k: int = Field(10, ge=1, description="Dense: a target must be among this many nearest skills.")
    dense_min_score: float = Field(
        0.4, ge=-1, le=1, description="Dense: minimum cosine of sentence and target preferred label."
    )
    phrase_min_score: float = Field(
        0.6, ge=-1, le=1, description="Dense: minimum cosine of a title-skills phrase and its top-1 skill."
    )
    multi_min_grounded: int = Field(
        2,
        ge=1,
        description="A sentence must ground to at least min(this, number of intended skills) of them.",
    )
    min_label_chars: int = Field(
        3, ge=0, description="Lexical: labels up to this length match case-sensitively only."
    )
    encoder: GroundingEncoderConfig = Field(
        default_factory=GroundingEncoderConfig, description="Encoder of dense grounding."
    )
    cache_dir: str | None = Field(
        "~/.cache/workembed/targets",
        description="Cache of the skill label embeddings (per model and label set); null: no cache.",
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidationConfig:
        if self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) must be at least min_chars ({self.min_chars})")
        if self.phrase_max_chars < self.phrase_min_chars:
            raise ValueError(
                f"phrase_max_chars ({self.phrase_max_chars}) must be at least "
                f"phrase_min_chars ({self.phrase_min_chars})"
            )
        return self


# -------------------------------------------------------------------------------------------- validator


@dataclass
class _Candidate:
    row: Mapping[str, Any]
    text: str
    kind: str  # the template's kind
    targets: list[str]

    @property
    def phrase(self) -> bool:
        """A skill phrase of a title-skills row rather than a sentence."""
        return self.kind == "title-skills"


class SentenceValidator:
    """Validates generated rows (see the module docstring); picklable, for use inside a Ray Data actor.

    ``taxonomy_labels`` maps every skill URI to its preferred label (the dense label space),
    ``alt_labels`` optionally adds alternative labels to lexical grounding, and ``templates`` maps template
    ids to their kind and output format (default: :data:`workembed.synth.templates.TEMPLATES`). The
    encoder, label embeddings and label matcher are built on first use (:meth:`warm` builds them at
    once) and are not pickled; the set of accepted sentences is.
    """

    def __init__(
        self,
        taxonomy_labels: Mapping[str, str],
        config: ValidationConfig,
        alt_labels: Mapping[str, Sequence[str]] | None = None,
        templates: Mapping[str, TemplateSpec] | None = None,
    ):
        if not taxonomy_labels:
            raise DatasetError("taxonomy_labels is empty: validation needs the skill labels to ground to")
        if templates is None:
            from workembed.synth.templates import TEMPLATES

            templates = TEMPLATES
        self.config = config
        self.templates = dict(templates)
        self._labels = dict(sorted(taxonomy_labels.items()))
        self._alt = {uri: [str(a) for a in alts] for uri, alts in (alt_labels or {}).items()}
        self._uris = list(self._labels)
        self._exact = self._exact_labels()
        self._seen: set[tuple] = set()
        self._encoder: Encoder | None = None
        self._vectors: np.ndarray | None = None
        self._matcher: LabelMatcher | None = None

    @classmethod
    def from_taxonomy(
        cls,
        taxonomy: Taxonomy,
        config: ValidationConfig,
        alt_labels: bool = True,
        templates: Mapping[str, TemplateSpec] | None = None,
    ) -> SentenceValidator:
        """A validator over every skill of ``taxonomy`` (with its alternative labels when ``alt_labels``)."""
        skills = taxonomy.skills.values()
        labels = {skill.uri: skill.preferred_label for skill in skills}
        alts = {skill.uri: list(skill.alt_labels) for skill in skills} if alt_labels else None
        return cls(labels, config, alts, templates)

    # ----------------------------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_encoder", "_vectors", "_matcher"):
            state[name] = None
        return state

    def warm(self) -> SentenceValidator:
        """Build what the grounding mode needs now: the label matcher, the encoder and the label
        embeddings (read from, or written to, ``cache_dir``)."""
        if self.config.grounding in ("lexical", "either"):
            self._label_matcher()
        if self.config.grounding in ("dense", "either"):
            self._label_vectors()
        return self

    def _label_matcher(self) -> LabelMatcher:
        if self._matcher is None:
            from workembed.data.lexical import LabelMatcher

            pairs = [(label, uri) for uri, label in self._labels.items()]
            pairs += [(alt, uri) for uri, alts in self._alt.items() for alt in alts]
            self._matcher = LabelMatcher(pairs, self.config.min_label_chars)
        return self._matcher

    def _label_vectors(self) -> np.ndarray:
        if self._vectors is None:
            from workembed.retrieval.embedding import target_embeddings

            self._vectors = target_embeddings(self._embedder(), self._labels, self.config.cache_dir)
        return self._vectors

    def _embedder(self) -> Encoder:
        if self._encoder is None:
            from workembed.models import Encoder

            settings = self.config.encoder
            self._encoder = Encoder(
                settings.model,
                batch_size=settings.batch_size,
                max_length=settings.max_length,
                device=settings.device,
            )
        return self._encoder

    def _exact_labels(self) -> dict[str, list[str]]:
        """Label key → skill URIs: the skills whose preferred label it is, else those whose alternative
        label it is."""
        preferred: dict[str, list[str]] = {}
        alternative: dict[str, list[str]] = {}
        for uri, label in self._labels.items():
            preferred.setdefault(_label_key(label), []).append(uri)
        for uri, alts in sorted(self._alt.items()):
            for alt in alts:
                alternative.setdefault(_label_key(alt), []).append(uri)
        exact = {key: sorted(set(uris)) for key, uris in alternative.items()}
        exact.update({key: sorted(set(uris)) for key, uris in preferred.items()})
        exact.pop("", None)
        return exact

    # --------------------------------------------------------------------------------- validation

    def validate(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
        """``(accepted, rejected)`` for generated rows: one accepted row per kept sentence, one reject per
        failed row (inference or parse error) or failed sentence."""
        accepted: list[dict] = []
        rejected: list[dict] = []
        candidates: list[_Candidate] = []
        for row in rows:
            error = row.get("__inference_error__")
            if error:
                rejected.append(_reject(f"{INFERENCE_ERROR}: {error}", row))
                continue
            template = self._template(row)
            n_sentences = row.get("n_sentences")
            try:
                texts = parse_output(
                    row.get("generated_text") or "",
                    template.output,  # type: ignore[arg-type]
                    int(n_sentences) if n_sentences is not None else None,
                )
            except ParseError as err:
                rejected.append(_reject(f"{PARSE_ERROR}: {err}", row))
                continue
            targets = _as_list(row.get("targets"))
            if template.kind != "title-skills" and not targets:
                raise ValueError(
                    f"row {row.get('prompt_id')!r} (template {row.get('template')!r}) has no targets"
                )
            for text in texts:
                candidate = _Candidate(row, text, template.kind, targets)
                reason = self._text_reason(candidate)
                if reason is None:
                    candidates.append(candidate)
                else:
                    rejected.append(_reject(reason, row, text))
        for candidate, grounded in zip(candidates, self._ground(candidates), strict=True):
            if not grounded:
                rejected.append(_reject(NOT_GROUNDED, candidate.row, candidate.text))
                continue
            key = self._dedupe_key(candidate, grounded)
            if key in self._seen:
                rejected.append(_reject(DUPLICATE, candidate.row, candidate.text))
                continue
            self._seen.add(key)
            accepted.append(self._accepted(candidate, grounded))
        return accepted, rejected

    def _template(self, row: Mapping[str, Any]) -> TemplateSpec:
        template_id = row.get("template")
        if template_id not in self.templates:
            known = ", ".join(sorted(self.templates))
            raise ValueError(
                f"row {row.get('prompt_id')!r}: unknown template {template_id!r} (known: {known})"
            )
        return self.templates[template_id]

    def _text_reason(self, candidate: _Candidate) -> str | None:
        config, row, text = self.config, candidate.row, candidate.text
        low, high = (
            (config.phrase_min_chars, config.phrase_max_chars)
            if candidate.phrase
            else (config.min_chars, config.max_chars)
        )
        if len(text) < low:
            return TOO_SHORT
        if len(text) > high:
            return TOO_LONG
        if candidate.phrase:
            return None
        if copies_prompt(text, _prompt_text(row), config.copy_overlap):
            return COPIES_PROMPT
        if row.get("forbid_label") and contains_label(text, _as_list(row.get("target_labels"))):
            return CONTAINS_LABEL
        return None

    def _ground(self, candidates: list[_Candidate]) -> list[list[str]]:
        """Per candidate, the skills it grounds to (empty: not grounded)."""
        mode = self.config.grounding
        lexical, dense = mode in ("lexical", "either"), mode in ("dense", "either")
        results: list[list[str]] = [[] for _ in candidates]
        pending = []  # candidates that still need the encoder
        for index, candidate in enumerate(candidates):
            if candidate.phrase:
                if lexical:
                    results[index] = self._exact.get(_label_key(candidate.text), [])
                if dense and not results[index]:
                    pending.append(index)
            else:
                hits = {m.uri for m in self._label_matcher().find(candidate.text)} if lexical else set()
                results[index] = [uri for uri in candidate.targets if uri in hits]
                if dense and len(results[index]) < len(candidate.targets):
                    pending.append(index)
        if pending:
            self._ground_dense([candidates[i] for i in pending], [results[i] for i in pending])
        return [
            grounded if candidate.phrase or len(grounded) >= self._required(candidate) else []
            for candidate, grounded in zip(candidates, results, strict=True)
        ]

    def _ground_dense(self, candidates: list[_Candidate], results: list[list[str]]) -> None:
        """Add the dense hits to ``results`` (in place), keeping each sentence's targets in row order."""
        from workembed.retrieval.scoring import top_k_rows

        vectors = self._label_vectors()
        scores = self._embedder().embed([c.text for c in candidates]) @ vectors.T
        indices, values = top_k_rows(scores, self.config.dense_top_k)
        for candidate, found, top, top_scores in zip(candidates, results, indices, values, strict=True):
            if candidate.phrase:
                if top_scores[0] >= self.config.phrase_min_score:
                    found[:] = [self._uris[top[0]]]
                continue
            near = {
                self._uris[j]
                for j, s in zip(top, top_scores, strict=True)
                if s >= self.config.dense_min_score
            }
            found[:] = [uri for uri in candidate.targets if uri in near or uri in found]

    def _required(self, candidate: _Candidate) -> int:
        return min(self.config.multi_min_grounded, len(candidate.targets))

    def _dedupe_key(self, candidate: _Candidate, grounded: list[str]) -> tuple:
        if candidate.phrase:
            row = candidate.row
            owner = row.get("title") or row.get("occupation_uri") or row.get("prompt_id")
            return ("phrase", owner, tuple(grounded))
        return ("sentence", normalize_text(candidate.text))

    @staticmethod
    def _accepted(candidate: _Candidate, grounded: list[str]) -> dict[str, Any]:
        row = candidate.row
        return {
            "sentence": candidate.text,
            "targets": list(grounded),
            "kind": candidate.kind,
            "template": row.get("template"),
            "template_version": row.get("template_version"),
            "prompt_id": row.get("prompt_id"),
            "language": row.get("language"),
            "title": row.get("title"),
            "occupation_uri": row.get("occupation_uri"),
            "seed": row.get("seed"),
        }


# ------------------------------------------------------------------------------------------------ helpers


def reason_code(reason: str) -> str:
    """The reason's code without its detail (``"parse_error: not JSON ..."`` → ``"parse_error"``)."""
    return reason.split(":", 1)[0]


def _reject(reason: str, row: Mapping[str, Any], sentence: str | None = None) -> dict[str, str]:
    """A reject: a failed row carries the row as it came; a failed sentence the row's fields other than
    the prompt and generated text (kept in the stage's prompts and generations) plus the sentence."""
    if sentence is None:
        raw = dict(row)
    else:
        raw = {key: value for key, value in row.items() if key not in _ROW_TEXT_FIELDS}
        raw["sentence"] = sentence
    return {"stage": STAGE, "reason": reason, "raw": json.dumps(raw, ensure_ascii=False, default=_jsonable)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _as_list(value: Any) -> list[str]:
    """A list field of a row (a list, a NumPy array from a Ray batch, or None) as a list of strings."""
    if value is None:
        return []
    return [str(item) for item in value]


def _prompt_text(row: Mapping[str, Any]) -> str:
    """The prompt as plain text: ``prompt``, else the contents of ``messages``."""
    prompt = row.get("prompt")
    if prompt:
        return str(prompt)
    return "\n".join(str(message.get("content") or "") for message in row.get("messages") or [])
