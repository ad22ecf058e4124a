"""The trainable work encoder: length-sorted chunks, pooling heads with parameters, and the model folder that
carries them to inference (``Encoder``), evaluation and serving."""

import numpy as np
import pytest
import torch

from workembed.eval.runner import input_kinds
from workembed.models import Encoder
from workembed.models.folder import HEAD_WEIGHTS_FILE, read_model_info
from workembed.models.heads import HeadConfig, masked_mean
from workembed.models.onnx_encoder import OnnxEncoder
from workembed.models.work_encoder import WorkEncoder
from workembed.retrieval.embedding import target_cache_path

TEXTS = [
    "software developer",
    "java",
    "operate heavy machinery safely on construction sites",
    "nurse",
    "manage a team of data engineers",
]
PROJECTION = HeadConfig(
    name="projection",
    sides={"title": 12, "skill": 12},
    input_sides={"job_title": "title", "skill_name": "skill"},
)


def reference(model: WorkEncoder, texts, side_ids=None) -> torch.Tensor:
    """Each text through the model on its own (no padding, no sorting)."""
    with torch.no_grad():
        rows = []
        for position, text in enumerate(texts):
            inputs = model.tokenize([text])
            if side_ids is not None:
                inputs["side_ids"] = torch.tensor([side_ids[position]])
            rows.append(model(**inputs))
        return torch.cat(rows)


def test_length_sorted_chunks_restore_the_input_order(tiny_bert):
    model = WorkEncoder(tiny_bert, max_length=16).eval()
    chunks, restore = model.tokenize_sorted_chunks(TEXTS, 2)
    lengths = [int(chunk["attention_mask"].sum(1).max()) for chunk in chunks]
    assert lengths == sorted(lengths)  # shortest texts first: each chunk pads to similar lengths
    assert [chunk["input_ids"].shape[1] for chunk in chunks] == lengths
    with torch.no_grad():
        embedded = torch.cat([model(**chunk) for chunk in chunks])[restore]
    torch.testing.assert_close(embedded, reference(model, TEXTS), atol=1e-5, rtol=1e-5)


def test_a_projection_head_maps_each_row_through_its_side(tiny_bert):
    torch.manual_seed(0)
    model = WorkEncoder(tiny_bert, max_length=16, head=PROJECTION).eval()
    sides = [0, 1, 1, 0, 1]  # title, skill, skill, title, skill
    chunks, restore = model.tokenize_sorted_chunks(TEXTS, 2, sides)
    with torch.no_grad():
        embedded = torch.cat([model(**chunk) for chunk in chunks])[restore]
        for row, side in enumerate(sides):
            inputs = model.tokenize([TEXTS[row]])
            hidden = model.backbone(**inputs).last_hidden_state
            pooled = masked_mean(hidden, inputs["attention_mask"])
            expected = model.head.project(pooled, model.sides[side])[0]
            torch.testing.assert_close(embedded[row], expected, atol=1e-5, rtol=1e-5)
    assert embedded.shape == (len(TEXTS), 12)
    assert torch.allclose(embedded.norm(dim=-1), torch.ones(len(TEXTS)))
    with pytest.raises(ValueError, match="needs side_ids"):
        model(**model.tokenize(TEXTS))


def test_the_model_folder_carries_the_projection_head_to_inference(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = WorkEncoder(tiny_bert, max_length=16, head=PROJECTION).eval()
    folder = model.save(tmp_path / "model")
    assert (folder / HEAD_WEIGHTS_FILE).is_file()
    info = read_model_info(folder)
    assert info["pooling"] == "projection" and info["head"]["sides"] == {"title": 12, "skill": 12}

    encoder = Encoder(folder, max_length=16)
    assert encoder.output_dim == 12 and encoder.side("job_title") == "title"
    titles = encoder.embed(TEXTS, "job_title")
    skills = encoder.embed(TEXTS, "skill_name")
    np.testing.assert_allclose(titles, reference(model, TEXTS, [0] * 5).numpy(), atol=1e-5)
    np.testing.assert_allclose(skills, reference(model, TEXTS, [1] * 5).numpy(), atol=1e-5)
    assert not np.allclose(titles, skills)  # the sides differ
    with pytest.raises(ValueError, match="none for kind 'skill_sentence'"):
        encoder.embed(TEXTS, "skill_sentence")
    # the target cache keeps the sides apart
    corpus = {"a": "java"}
    assert target_cache_path(encoder, corpus, tmp_path, "title") != target_cache_path(
        encoder, corpus, tmp_path, "skill"
    )
    with pytest.raises(ValueError, match="use runtime 'torch'"):
        OnnxEncoder(folder, cache_dir=tmp_path / "onnx")


def test_a_default_side_encodes_texts_of_unstated_kind(tiny_bert, tmp_path):
    head = PROJECTION.model_copy(update={"input_sides": {"job_title": "title", "default": "skill"}})
    folder = WorkEncoder(tiny_bert, max_length=16, head=head).save(tmp_path / "model")
    encoder = Encoder(folder, max_length=16)
    np.testing.assert_array_equal(encoder.embed(TEXTS), encoder.embed(TEXTS, "skill_sentence"))
    np.testing.assert_array_equal(encoder.embed(TEXTS), encoder.embed(TEXTS, "skill_name"))


def test_the_model_folder_carries_the_bilstm_head_to_inference(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = WorkEncoder(tiny_bert, max_length=16, head=HeadConfig(name="bilstm-attention")).eval()
    folder = model.save(tmp_path / "model")
    encoder = Encoder(folder, max_length=16)
    assert encoder.output_dim == 32 and encoder.side("job_title") is None
    np.testing.assert_allclose(encoder.embed(TEXTS), reference(model, TEXTS).numpy(), atol=1e-5)


def test_a_mean_pooling_folder_has_no_head_file(tiny_bert, tmp_path):
    folder = WorkEncoder(tiny_bert, max_length=16).save(tmp_path / "model")
    assert not (folder / HEAD_WEIGHTS_FILE).exists()
    assert read_model_info(folder)["pooling"] == "mean"
    encoder = Encoder(folder, max_length=16)
    assert encoder.head is None and encoder.output_dim == encoder.dim == 32


@pytest.mark.parametrize(
    ("meta", "kinds"),
    [
        ({"direction": "occupation -> skill"}, ("job_title", "skill_name")),
        ({"direction": "skill alternative label -> skill"}, ("skill_name", "skill_name")),
        ({"direction": "sentence -> skill label"}, ("skill_sentence", "skill_name")),
        ({"direction": "job title -> occupation surface form"}, ("job_title", "job_title")),
        (
            {"direction": "sentence -> skill", "input_types": {"target": "job_title"}},
            ("skill_sentence", "job_title"),
        ),
        ({"direction": "unknown"}, (None, None)),
        ({}, (None, None)),
    ],
)
def test_evaluation_datasets_state_the_kind_of_their_texts(meta, kinds):
    assert input_kinds(meta) == kinds
