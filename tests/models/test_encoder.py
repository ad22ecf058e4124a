import numpy as np
import pytest

from workembed.models import Encoder, resolve_model_path

PARAPHRASE_CASE = (
    "We need someone who can write SQL queries to analyse customer data.",
    "The role involves querying databases with SQL for customer analytics.",
    [
        "You will drive a forklift in our warehouse.",
        "Friendly nurses care for patients on the ward.",
        "The chef prepares seasonal dishes in the kitchen.",
        "Sales staff greet customers at the shop entrance.",
    ],
)


def test_pooled_shapes_and_normalisation(minilm):
    vectors = minilm.embed(["one", "two words", "a somewhat longer third sentence"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrase_is_closest_among_distractors(minilm):
    query, paraphrase, distractors = PARAPHRASE_CASE
    vectors = minilm.embed([query, paraphrase, *distractors])
    scores = vectors[1:] @ vectors[0]
    assert int(np.argmax(scores)) == 0
    assert scores[0] - scores[1:].max() > 0.2


def test_deterministic_and_batch_independent(minilm):
    texts = [f"sentence number {i} about {'data ' * (i % 5)}engineering" for i in range(20)]
    once = minilm.embed(texts)
    again = minilm.embed(texts)
    np.testing.assert_array_equal(once, again)
    small = Encoder("minilm", batch_size=3)
    np.testing.assert_allclose(small.embed(texts), once, atol=1e-5)
    # order of the input is the order of the output
    np.testing.assert_allclose(minilm.embed(texts[::-1]), once[::-1], atol=1e-5)


def test_token_embeddings_align_with_text(minilm):
    text = "Python and SQL skills"
    (tokens,) = minilm.embed_tokens([text])
    assert tokens.tokens[0] == "[CLS]" and tokens.tokens[-1] == "[SEP]"
    assert tokens.special == [True] + [False] * (len(tokens.tokens) - 2) + [True]
    assert tokens.vectors.shape == (len(tokens.tokens), 384)
    words = [
        text[start:end].lower()
        for (start, end), special in zip(tokens.offsets, tokens.special, strict=True)
        if not special
    ]
    assert words == ["python", "and", "sql", "skills"]
    # mean of the token vectors is the (unnormalised) pooled vector
    pooled = tokens.vectors.mean(0)
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled), minilm.embed([text])[0], atol=1e-5)


def test_truncation_and_empty_input(minilm):
    long_text = "skill " * 2000
    (tokens,) = minilm.embed_tokens([long_text])
    assert len(tokens.tokens) == minilm.max_length
    assert minilm.embed([]).shape == (0, 384)
    with pytest.raises(TypeError, match="sequence of strings"):
        minilm.embed("not a list")


def test_model_resolution_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known alias"):
        resolve_model_path(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_path(tmp_path)
    assert (resolve_model_path("minilm") / "config.json").is_file()


def test_tiny_random_model_from_directory(tmp_path):
    """Any local Hugging Face encoder directory loads, e.g. a tiny randomly initialised BERT."""
    from transformers import BertConfig, BertModel

    source = resolve_model_path("minilm")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            (tmp_path / name).write_bytes((source / name).read_bytes())
    tiny = Encoder(tmp_path)
    assert tiny.dim == 32
    assert tiny.embed(["hello", "world"]).shape == (2, 32)
