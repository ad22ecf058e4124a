"""ServedModel: pinning, embedding, ranking, extraction with spans, target spaces and their disk cache."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from workembed.models.extraction_settings import ExtractionSettings, write_extraction_settings
from workembed.serving.config import ServeConfig, SpaceConfig
from workembed.serving.runtime import NoThresholdError, ServedModel, UnknownSpaceError
from workembed.serving.spaces import SpaceCatalog, esco_spaces, read_space

PYTHON_SKILL = "http://data.europa.eu/esco/skill/ccd0a1d9-afda-43d9-b901-96344886e14d"
SOFTWARE_DEVELOPER = "http://data.europa.eu/esco/occupation/f2b15a0e-e65a-438a-affb-29b9d50b77d1"


def write_tsv(path, rows, header="id\tlabel\ttext"):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path):
    """A config with the builtin taxonomy and a three-target custom space 'langs'."""
    space = write_tsv(
        tmp_path / "langs.tsv",
        ["py\tPython\tpython programming", "js\tJavaScript\t", "nurse\tNursing\tcare for patients"],
    )
    return ServeConfig(
        model="unused",
        esco="builtin",
        cache_dir=str(tmp_path / "cache"),
        spaces={"langs": {"path": str(space), "description": "languages"}},
    )


@pytest.fixture(scope="module")
def minilm_served(tmp_path_factory):
    """MiniLM served from a folder (links to the packaged files) holding extraction.json (threshold 0.6)."""
    from workembed.models import resolve_model_path

    folder = tmp_path_factory.mktemp("minilm-calibrated")
    for item in resolve_model_path("minilm").iterdir():
        (folder / item.name).symlink_to(item)
    write_extraction_settings(folder, ExtractionSettings(threshold=0.6, temperature=0.05, among="all"))
    config = ServeConfig(esco="builtin", cache_dir=str(tmp_path_factory.mktemp("cache")))
    return ServedModel(str(folder), config)


# ------------------------------------------------------------------------------- tiny model


def test_folder_model_is_its_own_version_and_refuses_extraction(tiny_bert, tiny_config):
    model = ServedModel(str(tiny_bert), tiny_config)
    assert model.version == str(tiny_bert.resolve())
    assert model.info["extraction_threshold"] is None
    assert model.dim == 32
    assert model.spaces() == ["esco-skills", "esco-occupations", "langs"]
    with pytest.raises(NoThresholdError, match="no calibrated extraction threshold"):
        model.extract(["Python programming"])


def test_embed_tokens_share_the_pooled_vector(tiny_bert, tiny_config):
    model = ServedModel(str(tiny_bert), tiny_config)
    texts = ["python developer", "registered nurse in a hospital"]
    plain = model.embed(texts)
    with_tokens = model.embed(texts, tokens=True)
    pooled = np.array([row["embedding"] for row in plain])
    assert pooled.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.array([row["embedding"] for row in with_tokens]), pooled, atol=1e-5)
    assert "tokens" not in plain[0]
    tokens = with_tokens[0]["tokens"]
    assert [t["token"] for t in tokens] == ["python", "developer"]  # [CLS] and [SEP] left out
    assert [texts[0][t["start"] : t["end"]] for t in tokens] == ["python", "developer"]
    np.testing.assert_allclose(np.linalg.norm([t["embedding"] for t in tokens], axis=1), 1.0, atol=1e-6)


def test_rank_orders_a_custom_space_by_cosine(tiny_bert, tiny_config):
    model = ServedModel(str(tiny_bert), tiny_config)
    query = "python programming"
    targets = model.encoder.embed(["python programming", "JavaScript", "care for patients"])
    cosines = targets @ model.encoder.embed([query])[0]
    order = np.argsort(-cosines)
    ranked = model.rank([query], "langs", k=10)[0]
    assert [hit["id"] for hit in ranked] == [["py", "js", "nurse"][i] for i in order]  # k > |space|: all
    assert ranked[0]["id"] == "py" and ranked[0]["label"] == "Python"
    np.testing.assert_allclose([hit["score"] for hit in ranked], cosines[order], atol=1e-5)
    top = model.rank([query, "nurse"], "langs", k=1)
    assert len(top) == 2 and [hit["id"] for hit in top[0]] == ["py"]
    assert top[0][0]["score"] == pytest.approx(ranked[0]["score"], abs=1e-5)
    with pytest.raises(UnknownSpaceError, match="unknown target space 'nope' .*langs"):
        model.rank([query], "nope", k=1)


def test_target_embeddings_are_cached_on_disk_per_model(tiny_bert, tiny_config):
    first = ServedModel(str(tiny_bert), tiny_config)
    vectors = first.targets("langs")
    files = list(Path(tiny_config.cache_dir).rglob("*.npy"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    second = ServedModel(str(tiny_bert), tiny_config)
    calls = []
    embed = second.encoder.embed
    second.encoder.embed = lambda texts: calls.append(list(texts)) or embed(texts)
    np.testing.assert_array_equal(second.targets("langs"), vectors)
    assert calls == []  # read from the cache, not embedded again
    assert files[0].stat().st_mtime_ns == stamp
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_onnx_runtime_ranks_and_extracts_like_torch(tiny_bert, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the ONNX export cache (~/.cache/workembed/onnx) stays here
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    write_extraction_settings(folder, ExtractionSettings(threshold=0.2))
    torch_model = ServedModel(str(folder), tiny_config)
    onnx_model = ServedModel(str(folder), tiny_config.model_copy(update={"runtime": "onnx", "threads": 1}))
    assert type(onnx_model.encoder).__name__ == "OnnxEncoder" and onnx_model.info["runtime"] == "onnx"
    texts = ["python developer", "registered nurse on a ward"]
    ours, theirs = torch_model.rank(texts, "langs", 3), onnx_model.rank(texts, "langs", 3)
    assert [[hit["id"] for hit in row] for row in ours] == [[hit["id"] for hit in row] for row in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        np.testing.assert_allclose([h["score"] for h in mine], [h["score"] for h in other], atol=1e-4)
    sentences = ["You write Python code.", "Care for patients at night."]
    strip = lambda rows: [[(skill["id"], skill["spans"]) for skill in row] for row in rows]  # noqa: E731
    assert strip(onnx_model.extract(sentences)) == strip(torch_model.extract(sentences))


def test_mlflow_uri_without_tracking_server_is_a_clear_error(tiny_config):
    with pytest.raises(
        FileNotFoundError, match="set tracking_uri in the serve config or MLFLOW_TRACKING_URI"
    ):
        ServedModel("models:/workembed@champion", tiny_config)


def test_alias_uri_is_pinned_to_the_version_holding_it(
    mlflow_server, tiny_bert, tiny_config, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    monkeypatch.setenv("WORKEMBED_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # MLflow downloads models:/ via the global URI
    calibrated = tmp_path / "calibrated"
    shutil.copytree(tiny_bert, calibrated)
    write_extraction_settings(calibrated, ExtractionSettings(threshold=0.42))
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("serving-test") or client.create_experiment("serving-test")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(tiny_bert), "plain")
    client.log_artifacts(run.info.run_id, str(calibrated), "calibrated")
    client.set_terminated(run.info.run_id)
    name = f"served-{run.info.run_id[:8]}"
    client.create_registered_model(name)
    for path in ("plain", "calibrated"):
        client.create_model_version(name, f"{run.info.artifact_uri}/{path}", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    config = tiny_config.model_copy(update={"tracking_uri": mlflow_server})

    champion = ServedModel(f"models:/{name}@champion", config)
    assert (champion.uri, champion.version) == (f"models:/{name}@champion", f"models:/{name}/1")
    assert champion.info["extraction_threshold"] is None
    client.set_registered_model_alias(name, "champion", "2")  # a promotion
    promoted = ServedModel(f"models:/{name}@champion", config)
    assert promoted.version == f"models:/{name}/2"
    assert promoted.info["extraction_threshold"] == 0.42
    assert champion.version == f"models:/{name}/1"  # a loaded model stays pinned


# ------------------------------------------------------------------------------ target spaces


def test_esco_spaces_are_read_once_per_location():
    first, second = SpaceCatalog("builtin"), SpaceCatalog("builtin")
    skills = first.get("esco-skills")
    assert second.get("esco-skills") is skills
    assert len(skills) == 877 and len(first.get("esco-occupations")) == 91
    index = skills.ids.index(PYTHON_SKILL)
    assert skills.labels[index] == skills.texts[index] == "Python (computer programming)"
    assert esco_spaces.cache_info().currsize >= 1


def test_custom_space_files_tsv_and_jsonl(tmp_path):
    tsv = read_space("t", write_tsv(tmp_path / "a.tsv", ["a\tAlpha\t", "", "b\t  Beta  label \tbeta text"]))
    assert (tsv.ids, tsv.labels, tsv.texts) == (("a", "b"), ("Alpha", "Beta label"), ("Alpha", "beta text"))
    two = read_space("t", write_tsv(tmp_path / "b.tsv", ["x\tX"], header="id\tlabel"))
    assert two.corpus() == {"x": "X"}
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        json.dumps({"id": "p", "label": "Python", "text": "python code"})
        + "\n\n"
        + json.dumps({"id": "q", "label": "Q"})
        + "\n",
        encoding="utf-8",
    )
    assert read_space("j", jsonl, "d").corpus() == {"p": "python code", "q": "Q"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("h.tsv", "key\tlabel\na\tA\n", r"h.tsv:1: the header must be 'id<TAB>label'"),
        ("c.tsv", "id\tlabel\na\tA\nb\tB\textra\n", r"c.tsv:3: 3 columns, the header has 2"),
        ("d.tsv", "id\tlabel\na\tA\nb\tB\na\tA again\n", r"d.tsv:4: duplicate id 'a' \(first on line 2\)"),
        ("e.tsv", "id\tlabel\na\t \n", r"e.tsv:2: 'label' is missing or empty"),
        ("n.tsv", "id\tlabel\n", r"holds no targets"),
        ("j.jsonl", '{"id": "a", "label": "A"}\n{"id": "b", "label": \n', r"j.jsonl:2: not valid JSON"),
        ("k.jsonl", '{"id": "a", "lable": "A"}\n', r"k.jsonl:1: unknown key\(s\) lable"),
        ("l.jsonl", '["a", "A"]\n', r"l.jsonl:1: expected a JSON object, got list"),
        ("m.jsonl", '{"id": 3, "label": "A"}\n', r"m.jsonl:1: 'id' must be a string, got int"),
    ],
)
def test_custom_space_errors_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_space("s", path)


def test_missing_custom_space_file_fails_on_use(tmp_path):
    catalog = SpaceCatalog("builtin", {"gone": SpaceConfig(path=str(tmp_path / "gone.tsv"))})
    assert catalog.names() == ["esco-skills", "esco-occupations", "gone"]
    with pytest.raises(ValueError, match="space 'gone': file not found"):
        catalog.get("gone")


# ---------------------------------------------------------------------------- MiniLM on ESCO


def test_rank_and_normalize_titles_with_minilm(minilm_served):
    ranked = minilm_served.rank(["python programming"], "esco-skills", k=5)[0]
    assert ranked[0] == {
        "id": PYTHON_SKILL,
        "label": "Python (computer programming)",
        "score": pytest.approx(ranked[0]["score"]),
    }
    assert [hit["score"] for hit in ranked] == sorted((hit["score"] for hit in ranked), reverse=True)
    titles = minilm_served.normalize_titles(["software developer"], k=3)[0]
    assert titles[0]["id"] == SOFTWARE_DEVELOPER and titles[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_extract_finds_the_skill_and_its_span(minilm_served):
    sentence = "Experience with Python programming and SQL databases is required."
    assert minilm_served.info["extraction_threshold"] == 0.6
    skills = minilm_served.extract([sentence, "We offer a friendly team."])
    found = {skill["id"]: skill for skill in skills[0]}
    assert PYTHON_SKILL in found
    python = found[PYTHON_SKILL]
    assert python["score"] >= 0.6
    assert {"start": 16, "end": 34, "text": "Python programming"} in python["spans"]
    assert all(sentence[s["start"] : s["end"]] == s["text"] for skill in skills[0] for s in skill["spans"])
    assert [s["score"] for s in skills[0]] == sorted((s["score"] for s in skills[0]), reverse=True)
    assert skills[1] == []  # nothing reaches the threshold


def test_extract_ad_locates_sentences(minilm_served):
    ad = "Hiring!\n\n* Experience with Python programming.\n* Fluent   English and German."
    result = minilm_served.extract_ad(ad)
    assert [row["sentence"] for row in result] == [
        "Experience with Python programming.",
        "Fluent English and German.",
    ]
    assert ad[result[0]["start"] : result[0]["end"]] == "Experience with Python programming."
    assert ad[result[1]["start"] : result[1]["end"]] == "Fluent   English and German."
    assert PYTHON_SKILL in {skill["id"] for skill in result[0]["skills"]}
