"""Request and response bodies of the HTTP API.

Request models depend on the configured limits, so :func:`request_models` builds them from a
:class:`~workembed.serving.config.LimitsConfig`. Every text is stripped and must then be non-empty and
within its limit (``max_text_chars`` for texts, titles, sentences and sections, ``max_document_chars`` for
a job ad, a project document or a profile); lists hold 1 to ``max_items`` texts; ``k`` is 1 to ``max_k``;
a profile's ``payload`` is at most ``max_payload_bytes`` as compact JSON; unknown fields are errors. A
pydantic ``ValidationError`` (FastAPI: 422) gives the field's location. A request that parses but is refused
by a check made later (e.g. too many token vectors) raises :class:`RequestError` (422 too); any other
exception met while answering is a bug (500).
"""

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from workembed.errors import InputError
from workembed.serving.config import LimitsConfig, ProfileIndexConfig
from workembed.serving.profiles import check_filters

InputKind = Literal[
    "job_title",
    "skill_name",
    "skill_sentence",
    "brief_string",
    "search_query_string",
    "candidate_profile_string",
]
KIND_DESCRIPTION = (
    "What the texts are (job_title, skill_name, skill_sentence, brief_string, search_query_string, "
    "candidate_profile_string): a model with per-side projections embeds each kind through its side; "
    "null: the model's default side. No effect on other models."
)

DEFAULT_MAX_PROFILES = ProfileIndexConfig.model_fields["max_profiles_per_request"].default
FilterValue = str | bool | int | list[str] | list[int]


class RequestError(InputError):
    """The request is refused for a reason found after parsing it (HTTP 422 with this message, which names
    the field and the limit)."""


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON in UTF-8."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


class Body(BaseModel):
    """Base of the API bodies: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class RequestModels:
    """The request models built for one set of limits."""

    EmbedRequest: type[Body]
    RankRequest: type[Body]
    NormalizeTitlesRequest: type[Body]
    ExtractRequest: type[Body]
    MatchRequest: type[Body]
    Profile: type[Body]
    ProfilesRequest: type[Body]


def _one_of(model: BaseModel, first: str, second: str) -> None:
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"give exactly one of '{first}' and '{second}'")


def request_models(
    limits: LimitsConfig, max_profiles_per_request: int = DEFAULT_MAX_PROFILES
) -> RequestModels:
    """The request models with ``limits`` applied (and at most ``max_profiles_per_request`` profiles per
    upsert: pass ``ServeConfig.profiles.max_profiles_per_request``)."""
    if max_profiles_per_request < 1:
        raise ValueError(f"max_profiles_per_request must be positive, got {max_profiles_per_request}")
    Text = Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.max_text_chars)
    ]
    Document = Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.max_document_chars)
    ]
    Texts = Annotated[list[Text], Field(min_length=1, max_length=limits.max_items)]
    K = Annotated[int, Field(ge=1, le=limits.max_k)]

    class EmbedRequest(Body):
        """Texts to embed."""

        texts: Texts = Field(description="Texts to embed (pooled, L2-normalised).")
        tokens: bool = Field(False, description="Also return the token embeddings with their offsets.")
        kind: InputKind | None = Field(None, description=KIND_DESCRIPTION)

    class RankRequest(Body):
        """Texts to rank a target space for."""

        texts: Texts = Field(description="Query texts (skills, titles, sentences, ...).")
        space: Text = Field(description="Target space: esco-skills, esco-occupations or a custom space.")
        k: K = Field(min(10, limits.max_k), description="Targets returned per text.")
        kind: InputKind | None = Field(None, description=KIND_DESCRIPTION)

    class NormalizeTitlesRequest(Body):
        """Job titles to map to ESCO occupations."""

        titles: Texts = Field(description="Job titles.")
        k: K = Field(min(5, limits.max_k), description="Occupations returned per title.")

    class ExtractRequest(Body):
        """A job ad (segmented into sentences) or sentences to extract ESCO skills from."""

        text: Document | None = Field(None, description="A job ad (plain text or HTML).")
        sentences: Texts | None = Field(None, description="Sentences, each extracted on its own.")

        @model_validator(mode="after")
        def _text_or_sentences(self):
            _one_of(self, "text", "sentences")
            return self

    class MatchRequest(Body):
        """A project document to match against the indexed profiles."""

        document: Document | None = Field(None, description="The project document as one text.")
        sections: Texts | None = Field(None, description="The project document as section texts.")
        k: K = Field(min(10, limits.max_k), description="Profiles returned.")
        filters: dict[str, FilterValue] = Field(
            default_factory=dict,
            description="Hard filters, all of which must hold: category, language, location or "
            "payload.<field> → a value (equality) or a list of values (any of).",
        )

        @field_validator("filters")
        @classmethod
        def _known_filters(cls, value: dict[str, Any]) -> dict[str, Any]:
            return check_filters(value)

        @model_validator(mode="after")
        def _document_or_sections(self):
            _one_of(self, "document", "sections")
            return self

    class Profile(Body):
        """A profile to index (embedded from its text)."""

        id: Text = Field(description="The profile's id (an upsert with the same id replaces it).")
        text: Document = Field(description="The text embedded for matching.")
        category: Text | None = Field(None, description="Category (filterable).")
        language: Text | None = Field(None, description="Language (filterable).")
        location: Text | None = Field(None, description="Location (filterable).")
        payload: dict[str, Any] = Field(
            default_factory=dict, description="Further fields, filterable as payload.<field>."
        )

        @field_validator("payload")
        @classmethod
        def _plain_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
            for key in value:
                if not key or "." in key:
                    raise ValueError(f"payload key '{key}' must be non-empty and hold no '.'")
            size = json_size(value)
            if size > limits.max_payload_bytes:
                raise ValueError(
                    f"payload is {size} bytes as JSON, over the limit of {limits.max_payload_bytes} "
                    "(limits.max_payload_bytes)"
                )
            return value

    class ProfilesRequest(Body):
        """Profiles to insert or replace."""

        profiles: list[Profile] = Field(min_length=1, max_length=max_profiles_per_request)

        @field_validator("profiles")
        @classmethod
        def _unique_ids(cls, value: list[Profile]) -> list[Profile]:
            seen: set[str] = set()
            for profile in value:
                if profile.id in seen:
                    raise ValueError(f"duplicate profile id '{profile.id}'")
                seen.add(profile.id)
            return value

    return RequestModels(
        EmbedRequest=EmbedRequest,
        RankRequest=RankRequest,
        NormalizeTitlesRequest=NormalizeTitlesRequest,
        ExtractRequest=ExtractRequest,
        MatchRequest=MatchRequest,
        Profile=Profile,
        ProfilesRequest=ProfilesRequest,
    )


# ----------------------------------------------------------------------------------- responses


class TokenVector(Body):
    token: str
    start: int = Field(description="Start offset of the token in its text.")
    end: int = Field(description="End offset (exclusive).")
    embedding: list[float] = Field(description="L2-normalised token embedding.")


class Embedding(Body):
    embedding: list[float] = Field(description="Mean-pooled, L2-normalised embedding.")
    tokens: list[TokenVector] | None = Field(None, description="Non-special tokens, when asked for.")


class EmbedResponse(Body):
    model: str = Field(description="The model version that answered.")
    embeddings: list[Embedding]


class Hit(Body):
    id: str
    label: str
    score: float = Field(description="Cosine similarity.")


class RankResponse(Body):
    model: str = Field(description="The model version that answered.")
    space: str
    results: list[list[Hit]] = Field(description="Per query text, the targets best first.")


class NormalizeTitlesResponse(Body):
    model: str = Field(description="The model version that answered.")
    results: list[list[Hit]] = Field(description="Per title, ESCO occupations best first.")


class Span(Body):
    start: int = Field(description="Start offset in the sentence.")
    end: int = Field(description="End offset in the sentence (exclusive).")
    text: str


class ExtractedSkill(Body):
    id: str
    label: str
    score: float = Field(description="Token-attention match score (≥ the threshold).")
    spans: list[Span] = Field(description="Where in the sentence the skill matched.")


class SentenceSkills(Body):
    sentence: str
    start: int | None = Field(None, description="Start of the sentence in the job ad, when found verbatim.")
    end: int | None = Field(None, description="End of the sentence in the job ad (exclusive).")
    skills: list[ExtractedSkill] = Field(description="Best first.")


class ExtractResponse(Body):
    model: str = Field(description="The model version that answered.")
    threshold: float = Field(description="The calibrated threshold used.")
    sentences: list[SentenceSkills]


class ProfileHit(Body):
    id: str
    score: float = Field(description="Cosine similarity.")
    category: str | None = None
    language: str | None = None
    location: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class MatchResponse(Body):
    model: str = Field(description="The model version that answered.")
    results: list[ProfileHit] = Field(description="Best first.")


class ProfilesResponse(Body):
    model: str = Field(description="The model version whose index holds the profiles.")
    upserted: int
    total: int = Field(description="Profiles in the index now.")
