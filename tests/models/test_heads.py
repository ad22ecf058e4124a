import numpy as np
import pytest
import torch
from pydantic import ValidationError

from workembed.config import ConfigError, load_config
from workembed.models.heads import (
    HEADS,
    AsymmetricProjection,
    BiLSTMAttentionPooling,
    HeadConfig,
    MeanPooling,
    SectionEncoderHead,
    SoftLateInteraction,
    TokenAttentionMatch,
    build_head,
    content_token_mask,
    masked_mean,
)
from workembed.retrieval.embedding import query_token_vectors
from workembed.retrieval.scoring import l2_normalize, late_interaction_scores
from workembed.retrieval.skill_extraction import redundancy_filter, token_attention_scores

VOCAB = "[PAD] [UNK] [CLS] [SEP] [MASK] python sql data skills and nurse ##s".split()


def random_tokens(seed: int = 0, lengths=(5, 3, 1), hidden: int = 8):
    """Token outputs [B, T, H] and a right-padded mask with the given real lengths."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(len(lengths), max(lengths), hidden, generator=generator)
    mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)
    return tokens, mask.long()


def scramble_padding(tokens: torch.Tensor, mask: torch.Tensor, extra: int = 2) -> tuple:
    """The same rows with ``extra`` more padded positions and NaN / huge values in every padded slot."""
    batch, length, hidden = tokens.shape
    wide = torch.full((batch, length + extra, hidden), 1e6)
    wide[:, :length] = tokens
    wide_mask = torch.zeros(batch, length + extra, dtype=mask.dtype)
    wide_mask[:, :length] = mask
    wide[~wide_mask.bool()] = float("nan")
    wide[0, -1] = 1e6  # not every padded value is NaN
    return wide, wide_mask


# ------------------------------------------------------------------------------------------- mean


def test_masked_mean_matches_hand_computation_and_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [100.0, -7.0]], [[4.0, 0.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = torch.tensor([[2.0, 4.0], [4.0, 0.0]])
    assert torch.equal(masked_mean(hidden, mask), expected)
    changed = hidden.clone()
    changed[0, 2] = float("nan")
    changed[1, 1:] = -1e9
    assert torch.equal(masked_mean(changed, mask), expected)
    pooled = MeanPooling(2)(changed, mask)
    torch.testing.assert_close(
        pooled, torch.tensor([[1.0, 2.0], [1.0, 0.0]]) / torch.tensor([[5**0.5], [1.0]])
    )
    assert torch.equal(MeanPooling(2, normalize=False)(changed, mask), expected)


def test_masked_mean_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="does not match"):
        masked_mean(torch.zeros(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\[batch, tokens, hidden\]"):
        masked_mean(torch.zeros(2, 3), torch.ones(2, 3))


# ------------------------------------------------------------------------------ late interaction


@pytest.mark.parametrize("temperature", [0.05, 0.3, 2.0])
def test_late_interaction_equals_numpy_reference(temperature):
    tokens, mask = random_tokens(seed=1)
    mask[0, 1] = 0  # a hole: not only trailing padding
    targets = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    scores = SoftLateInteraction(temperature)(tokens, mask, targets)
    per_query = [tokens[row][mask[row].bool()].numpy() for row in range(len(tokens))]
    reference = late_interaction_scores(per_query, targets.numpy(), temperature)
    assert scores.shape == (3, 4)
    np.testing.assert_allclose(scores.numpy(), reference, atol=1e-6)
    for row, vectors in enumerate(per_query):  # the extraction formula is the same score
        cosines = l2_normalize(vectors) @ l2_normalize(targets.numpy()).T
        np.testing.assert_allclose(
            scores[row].numpy(), token_attention_scores(cosines, temperature), atol=1e-6
        )


def test_late_interaction_is_differentiable_and_ignores_padding():
    tokens, mask = random_tokens(seed=3)
    targets = torch.randn(2, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
    tokens.requires_grad_(True)
    scorer = SoftLateInteraction(0.1)
    scorer(tokens, mask, targets).sum().backward()
    assert torch.all(tokens.grad[~mask.bool()] == 0)
    assert torch.all(tokens.grad[mask.bool()].abs().sum(-1) > 0)
    assert targets.grad.abs().sum() > 0
    wide, wide_mask = scramble_padding(tokens.detach(), mask)
    torch.testing.assert_close(scorer(wide, wide_mask, targets), scorer(tokens, mask, targets))


def test_late_interaction_limits_and_errors():
    # one token per query: the score is that token's cosine, whatever τ
    tokens = torch.tensor([[[1.0, 0.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 0]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    torch.testing.assert_close(
        SoftLateInteraction(7.0)(tokens, mask, targets), torch.tensor([[2**-0.5, 0.0]])
    )
    with pytest.raises(ValueError, match=r"rows \[0\] have no token"):
        SoftLateInteraction()(tokens, torch.zeros_like(mask), targets)
    with pytest.raises(ValueError, match="targets must be"):
        SoftLateInteraction()(tokens, mask, torch.ones(2, 3))
    with pytest.raises(ValueError, match="temperature must be positive"):
        SoftLateInteraction(0.0)


def test_content_token_mask_drops_special_tokens_but_never_empties_a_row():
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    special = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0]])
    expected = torch.tensor([[False, True, True, False], [True, True, False, False]])
    assert torch.equal(content_token_mask(attention, special), expected)


def test_late_interaction_on_a_backbone_equals_the_eval_scorer(tmp_path, save_tiny_bert):
    """Backbone tokens with [CLS]/[SEP] masked out score exactly as ``eval.scoring`` ranks."""
    from workembed.models import Encoder

    save_tiny_bert(tmp_path, VOCAB)
    encoder = Encoder(tmp_path)
    queries = ["python and sql skills", "nurses", ""]
    targets = encoder.embed(["data skills", "nurse", "sql"])
    reference = late_interaction_scores(query_token_vectors(encoder, queries), targets, 0.1)

    encoded = encoder.tokenizer(queries, padding=True, return_special_tokens_mask=True, return_tensors="pt")
    special = encoded.pop("special_tokens_mask")
    with torch.no_grad():
        hidden = encoder.model(**encoded).last_hidden_state
    mask = content_token_mask(encoded["attention_mask"], special)
    scores = SoftLateInteraction(0.1)(hidden, mask, torch.from_numpy(targets))
    np.testing.assert_allclose(scores.numpy(), reference, atol=1e-5)


# ------------------------------------------------------------------------------- token attention


def test_token_attention_weights_best_skill_and_scores():
    tokens, mask = random_tokens(seed=5, lengths=(4, 2))
    skills = torch.randn(6, 8, generator=torch.Generator().manual_seed(6))
    out = TokenAttentionMatch(0.2)(tokens, mask, skills)
    real = mask.bool()
    assert out.scores.shape == (2, 6) and out.weights.shape == (2, 4, 6) and out.best_skill.shape == (2, 4)
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(2, 6))
    assert torch.all(out.weights[~real] == 0)
    assert torch.all(out.best_skill[~real] == -1)
    for row in range(2):
        vectors = tokens[row][real[row]].numpy()
        cosines = l2_normalize(vectors) @ l2_normalize(skills.numpy()).T
        np.testing.assert_allclose(out.cosines[row][real[row]].numpy(), cosines, atol=1e-6)
        assert out.best_skill[row][real[row]].tolist() == cosines.argmax(axis=1).tolist()
        np.testing.assert_allclose(out.scores[row].numpy(), token_attention_scores(cosines, 0.2), atol=1e-6)
        # the skills the redundancy filter keeps among all are exactly the tokens' best skills
        kept = redundancy_filter(cosines, range(6), among="all")
        assert kept.tolist() == sorted(set(out.best_skill[row][real[row]].tolist()))


def test_token_attention_best_skill_ties_go_to_the_lower_index():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    skills = torch.tensor([[0.0, 3.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    out = TokenAttentionMatch()(tokens, torch.ones(1, 2), skills)
    assert out.best_skill.tolist() == [[1, 0]]


# ------------------------------------------------------------------------------------ projection


def test_projection_dims_and_normalisation():
    head = AsymmetricProjection(8, {"title": 5, "skill": 3})
    tokens, mask = random_tokens(seed=7)
    title, skill = head(tokens, mask, "title"), head(tokens, mask, "skill")
    assert title.shape == (3, 5) and skill.shape == (3, 3)
    torch.testing.assert_close(title.norm(dim=-1), torch.ones(3))
    layer = head.projections["skill"]
    expected = torch.nn.functional.normalize(masked_mean(tokens, mask) @ layer.weight.T + layer.bias, dim=-1)
    torch.testing.assert_close(skill, expected)
    assert head.sides == {"title": 5, "skill": 3}
    with pytest.raises(ValueError, match=r"unknown side 'job' \(sides: title, skill\)"):
        head(tokens, mask, "job")


def test_a_step_on_one_side_leaves_the_other_side_unchanged():
    torch.manual_seed(0)
    head = AsymmetricProjection(8, {"title": 4, "skill": 4})
    before = {name: p.detach().clone() for name, p in head.named_parameters()}
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.1)
    tokens, mask = random_tokens(seed=8)
    loss = -head(tokens, mask, "title")[:, 0].sum()
    loss.backward()
    assert head.projections["skill"].weight.grad is None
    optimizer.step()
    for name, param in head.named_parameters():
        if name.startswith("projections.skill."):
            assert torch.equal(param, before[name]), name
        else:
            assert not torch.equal(param, before[name]), name


# --------------------------------------------------------------------------------------- BiLSTM


def test_bilstm_attention_padding_invariance_and_weights():
    torch.manual_seed(0)
    head = BiLSTMAttentionPooling(8, lstm_hidden_size=6).eval()
    tokens, mask = random_tokens(seed=9)
    pooled, weights = head.pool(tokens, mask)
    assert pooled.shape == (3, 12) and head.output_dim == 12
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert torch.all(weights[~mask.bool()] == 0)
    # more padding, garbage in it, and each row alone in its batch: the same vectors
    wide, wide_mask = scramble_padding(tokens, mask, extra=3)
    torch.testing.assert_close(head(wide, wide_mask), head(tokens, mask))
    for row, length in enumerate(mask.sum(1).tolist()):
        alone = head(tokens[row : row + 1, :length], mask[row : row + 1, :length])
        torch.testing.assert_close(alone, head(tokens, mask)[row : row + 1])
    torch.testing.assert_close(head(tokens, mask).norm(dim=-1), torch.ones(3))


def test_bilstm_attention_gradients_and_mask_errors():
    head = BiLSTMAttentionPooling(8)
    tokens, mask = random_tokens(seed=10)
    head(tokens, mask).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match="right-padded"):
        head(tokens, torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"rows \[2\] have no token"):
        head(tokens, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]))


# ------------------------------------------------------------------------------------- registry


def test_every_registered_head_builds_from_its_config():
    configs = {
        "mean": HeadConfig(name="mean"),
        "late-interaction": HeadConfig(name="late-interaction", temperature=0.2),
        "token-attention": HeadConfig(name="token-attention"),
        "projection": HeadConfig(name="projection", sides={"title": 6, "skill": 4}),
        "section": HeadConfig(name="section", num_section_types=3, transformer_layers=1, attention_heads=2),
        "bilstm-attention": HeadConfig(name="bilstm-attention", lstm_hidden_size=5),
    }
    assert set(configs) == set(HEADS)
    heads = {name: build_head(config, hidden_size=8) for name, config in configs.items()}
    assert isinstance(heads["mean"], MeanPooling)
    assert heads["late-interaction"].temperature == 0.2
    assert isinstance(heads["token-attention"], TokenAttentionMatch)
    assert heads["projection"].sides == {"title": 6, "skill": 4}
    assert isinstance(heads["section"], SectionEncoderHead) and heads["section"].num_section_types == 3
    assert len(heads["section"].transformer.layers) == 1
    assert heads["bilstm-attention"].output_dim == 10


def test_head_config_rejects_what_the_head_does_not_use(tmp_path):
    with pytest.raises(
        ValidationError, match=r"temperature not used by head 'mean' \(its parameters: normalize\)"
    ):
        HeadConfig(name="mean", temperature=0.1)
    with pytest.raises(ValidationError, match="head 'projection' needs sides"):
        HeadConfig(name="projection")
    with pytest.raises(ValidationError, match="head 'section' needs num_section_types"):
        HeadConfig(name="section")
    with pytest.raises(
        ValidationError, match=r"unknown head 'max' \(known: bilstm-attention, late-interaction"
    ):
        HeadConfig(name="max")
    with pytest.raises(ValidationError, match="side 'a.b' must be a letter"):
        HeadConfig(name="projection", sides={"a.b": 4})
    with pytest.raises(ValueError, match=r"attention_heads \(3\) must divide the hidden size \(8\)"):
        build_head(HeadConfig(name="section", num_section_types=2, attention_heads=3), hidden_size=8)
    path = tmp_path / "head.yaml"
    path.write_text("name: projection\nsides: {title: 16}\n")
    loaded = load_config(HeadConfig, path, overrides=["sides.skill=8"])
    assert loaded.sides == {"title": 16, "skill": 8}
    with pytest.raises(ConfigError, match="lstm_layers not used by head 'projection'"):
        load_config(HeadConfig, path, overrides=["lstm_layers=2"])
