"""Request models with configured limits, response models, and the serving config's validation."""

import pytest
from pydantic import ValidationError

from workembed.config import load_config
from workembed.serving.config import LimitsConfig, ProfileIndexConfig, ServeConfig
from workembed.serving.schemas import ExtractResponse, request_models

LIMITS = LimitsConfig(max_items=3, max_text_chars=10, max_document_chars=40, max_k=5)
MODELS = request_models(LIMITS, max_profiles_per_request=2)


def problem(model, body):
    """The single validation problem of ``body``: (location, message)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return ".".join(str(part) for part in errors[0]["loc"]), errors[0]["msg"]


def test_texts_are_stripped_and_defaults_follow_the_limits():
    assert MODELS.EmbedRequest.model_validate({"texts": ["  python  ", "sql"]}).texts == ["python", "sql"]
    rank = MODELS.RankRequest.model_validate({"texts": ["python"], "space": " skills "})
    assert (rank.space, rank.k) == ("skills", 5)
    assert MODELS.EmbedRequest.model_validate({"texts": ["  " + "x" * 10 + "  "]}).texts == [
        "x" * 10
    ]  # default min(10, max_k)
    assert MODELS.NormalizeTitlesRequest.model_validate({"titles": ["nurse"]}).k == 5
    assert request_models(LimitsConfig()).RankRequest.model_validate({"texts": ["a"], "space": "s"}).k == 10


@pytest.mark.parametrize(
    ("body", "location", "message"),
    [
        ({"texts": []}, "texts", "at least 1 item"),
        ({"texts": ["   "]}, "texts.0", "at least 1 character"),
        ({"texts": ["a", "x" * 11]}, "texts.1", "at most 10 characters"),
        ({"texts": ["a", "b", "c", "d"]}, "texts", "at most 3 items"),
        ({"texts": "python"}, "texts", "valid list"),
        ({"texts": [3]}, "texts.0", "valid string"),
        ({"texts": ["a"], "tokens": "maybe"}, "tokens", "valid boolean"),
        ({"texts": ["a"], "token": True}, "token", "Extra inputs are not permitted"),
        ({}, "texts", "Field required"),
    ],
)
def test_embed_request_errors_name_the_field(body, location, message):
    where, what = problem(MODELS.EmbedRequest, body)
    assert where == location and message in what


@pytest.mark.parametrize(
    ("k", "message"),
    [(0, "greater than or equal to 1"), (6, "less than or equal to 5"), ("many", "valid integer")],
)
def test_k_out_of_range(k, message):
    where, what = problem(MODELS.RankRequest, {"texts": ["a"], "space": "s", "k": k})
    assert where == "k" and message in what


def test_extract_takes_a_document_or_sentences():
    assert MODELS.ExtractRequest.model_validate({"text": " " + "x" * 40 + " "}).text == "x" * 40  # a document
    assert problem(MODELS.ExtractRequest, {"text": "x" * 41}) == (
        "text",
        "String should have at most 40 characters",
    )
    assert MODELS.ExtractRequest.model_validate({"sentences": ["a b"]}).sentences == ["a b"]
    for body in ({}, {"text": "an ad", "sentences": ["a"]}):
        assert problem(MODELS.ExtractRequest, body) == (
            "",
            "Value error, give exactly one of 'text' and 'sentences'",
        )


def test_match_filters_and_document():
    request = MODELS.MatchRequest.model_validate(
        {"sections": ["goal", "stack"], "filters": {"category": ["a", "b"], "payload.remote": True}}
    )
    assert request.filters == {"category": ["a", "b"], "payload.remote": True}
    where, what = problem(MODELS.MatchRequest, {"document": "d", "filters": {"colour": "red"}})
    assert where == "filters" and "unknown filter 'colour'" in what
    where, what = problem(MODELS.MatchRequest, {"document": "d", "filters": {"category": []}})
    assert where == "filters" and "the list of values is empty" in what
    assert problem(MODELS.MatchRequest, {"k": 2})[1].endswith("give exactly one of 'document' and 'sections'")


def test_profiles_request_limits_ids_and_payload_keys():
    profile = {"id": " p1 ", "text": "data engineer", "payload": {"years": 3}}
    parsed = MODELS.ProfilesRequest.model_validate({"profiles": [profile]}).profiles[0]
    assert (parsed.id, parsed.category, parsed.payload) == ("p1", None, {"years": 3})
    three = [{**profile, "id": f"p{i}"} for i in range(3)]
    assert problem(MODELS.ProfilesRequest, {"profiles": three})[0] == "profiles"
    where, what = problem(MODELS.ProfilesRequest, {"profiles": [profile, {**profile, "id": "p1"}]})
    assert where == "profiles" and "duplicate profile id 'p1'" in what
    where, what = problem(MODELS.ProfilesRequest, {"profiles": [{**profile, "payload": {"a.b": 1}}]})
    assert where == "profiles.0.payload" and "must be non-empty and hold no '.'" in what
    assert problem(MODELS.ProfilesRequest, {"profiles": [{"id": "p", "text": " "}]})[0] == "profiles.0.text"


def test_runtime_output_fits_the_response_model():
    response = ExtractResponse.model_validate(
        {
            "model": "models:/w/3",
            "threshold": 0.6,
            "sentences": [
                {
                    "sentence": "Python daily",
                    "skills": [
                        {
                            "id": "s",
                            "label": "Python",
                            "score": 0.7,
                            "spans": [{"start": 0, "end": 6, "text": "Python"}],
                        }
                    ],
                }
            ],
        }
    )
    assert response.sentences[0].start is None and response.sentences[0].skills[0].spans[0].end == 6


# ------------------------------------------------------------------------------------- config


def test_config_defaults_and_yaml(tmp_path):
    config = ServeConfig(esco="builtin")
    assert (config.model, config.alias_poll_s, config.limits.max_k) == (
        "models:/workembed@champion",
        30.0,
        100,
    )
    assert config.profiles.local and config.profiles.qdrant_path == "~/.cache/workembed/qdrant"
    path = tmp_path / "serve.yaml"
    path.write_text(
        "model: minilm\nesco: builtin\nspaces:\n  langs:\n    path: data/langs.tsv\n", encoding="utf-8"
    )
    loaded = load_config(ServeConfig, path, overrides=["limits.max_items=8"])
    assert (loaded.spaces["langs"].path, loaded.limits.max_items) == ("data/langs.tsv", 8)
    served = ServeConfig.model_validate(
        {"esco": "builtin", "profiles": {"qdrant_url": "http://127.0.0.1:6333"}}
    )
    assert served.profiles.qdrant_url == "http://127.0.0.1:6333" and served.profiles.qdrant_path is None
    assert not served.profiles.local


def test_tracking_uri_falls_back_to_the_environment(monkeypatch):
    assert ServeConfig(esco="builtin").effective_tracking_uri() is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert ServeConfig(esco="builtin").effective_tracking_uri() == "http://127.0.0.1:5000"
    assert ServeConfig(esco="builtin", tracking_uri="http://x:1").effective_tracking_uri() == "http://x:1"


@pytest.mark.parametrize(
    ("values", "location", "message"),
    [
        ({"profiles": {"qdrant_path": "/q", "qdrant_url": "http://q"}}, "profiles", "are exclusive"),
        ({"profiles": {"qdrant_path": None}}, "profiles", "set qdrant_path (local mode) or qdrant_url"),
        ({"profiles": {"collection_prefix": "a b"}}, "profiles.collection_prefix", "should match pattern"),
        ({"limits": {"max_items": 0}}, "limits.max_items", "greater than or equal to 1"),
        ({"limits": {"max_text_chars": 500, "max_document_chars": 100}}, "limits", "(100) must be at least"),
        ({"alias_poll_s": 0}, "alias_poll_s", "greater than 0"),
        ({"spaces": {"esco-skills": {"path": "a.tsv"}}}, "spaces", "'esco-skills' is a built-in space"),
        ({"spaces": {"my space": {"path": "a.tsv"}}}, "spaces", "space name 'my space' must be"),
        ({"spaces": {"s": {"path": "a.csv"}}}, "spaces.s.path", "'a.csv' must end in .tsv or .jsonl"),
        ({"runtime": "tensorrt"}, "runtime", "Input should be 'torch', 'onnx' or 'onnx-int8'"),
        ({"api_key_env": "API KEY"}, "api_key_env", "'API KEY' is not an environment variable name"),
        (
            {"batching": {"batch_wait_timeout_s": -1}},
            "batching.batch_wait_timeout_s",
            "greater than or equal",
        ),
        ({"modle": "minilm"}, "modle", "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_field(values, location, message):
    where, what = problem(ServeConfig, {"esco": "builtin", **values})
    assert where == location and message in what


def test_profile_index_config_alone():
    assert ProfileIndexConfig(qdrant_url="http://q").qdrant_path is None
    with pytest.raises(ValidationError, match="exclusive"):
        ProfileIndexConfig(qdrant_url="http://q", qdrant_path="/q")
