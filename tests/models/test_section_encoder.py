import pytest
import torch
from torch import nn

from workembed.models.heads import SectionDocumentEncoder, SectionEncoderHead, section_weighted_mean

VOCAB = "[PAD] [UNK] [CLS] [SEP] [MASK] python sql data engineer nurse care team lead java french ##s".split()
TITLE, SKILLS, LANGUAGES = 0, 1, 2


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory, save_tiny_bert):
    """A tiny randomly initialised BERT (hidden 32, 2 layers) and its WordPiece tokenizer, on disk."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), VOCAB)


@pytest.fixture
def encoder(backbone_dir):
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(1)
    head = SectionEncoderHead(32, num_section_types=3, num_layers=1, num_attention_heads=2, dropout=0.1)
    return SectionDocumentEncoder(
        AutoModel.from_pretrained(backbone_dir), AutoTokenizer.from_pretrained(backbone_dir), head
    )


DOCUMENTS = [
    [(TITLE, "data engineer"), (SKILLS, "python sql java"), (LANGUAGES, "")],
    [(TITLE, "nurse"), (SKILLS, "care team lead")],
    [(SKILLS, "  ")],
]


class Zero(nn.Module):
    """Stands in for the transformer: the head then reduces to skip connection + pooling."""

    def forward(self, x, src_key_padding_mask=None):
        return torch.zeros_like(x)


# ------------------------------------------------------------------------------------- pooling


def test_section_weighted_mean_on_hand_built_sections():
    nan = float("nan")
    tokens = torch.tensor(
        [
            [[1.0, 0.0], [3.0, 0.0], [0.0, 6.0], [nan, nan]],  # section 0: n=2, mean (2, 0); section 1: n=1
            [[2.0, 2.0], [5.0, 5.0], [9.0, 9.0], [9.0, 9.0]],  # one section of one token, then padding
        ]
    )
    section_index = torch.tensor([[0, 0, 1, -1], [0, -1, -1, -1]])
    pooled = section_weighted_mean(tokens, section_index)
    # (2·(2, 0) + 1·(0, 6)) / 3 and (2, 2)
    torch.testing.assert_close(pooled, torch.tensor([[4 / 3, 2.0], [2.0, 2.0]]))


def test_head_with_identity_like_transformer_is_skip_plus_weighted_pooling():
    torch.manual_seed(0)
    head = SectionEncoderHead(4, num_section_types=2, num_layers=1, num_attention_heads=2, normalize=False)
    head.transformer = Zero()
    hidden = torch.tensor([[[1.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 0, 6.0, 0]]])
    out = head(hidden, torch.tensor([[0, 0, 1]]), torch.tensor([[0, 0, 1]]))
    torch.testing.assert_close(out, torch.tensor([[4 / 3, 0, 2.0, 0]]))


def test_head_depends_on_section_types_and_ignores_padding():
    torch.manual_seed(0)
    head = SectionEncoderHead(8, num_section_types=3, num_layers=2, num_attention_heads=2).eval()
    hidden = torch.randn(2, 5, 8)
    types = torch.tensor([[0, 0, 1, 1, 2], [2, 2, 0, 0, 0]])
    index = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 1, -1, -1]])
    out = head(hidden, types, index)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    # padded positions: garbage values and type ids, longer padding; and the short document alone
    wide = torch.cat([hidden, torch.full((2, 3, 8), float("nan"))], dim=1)
    wide[1, 3:5] = 1e6
    wide_types = torch.cat([types, torch.full((2, 3), 7)], dim=1)
    wide_index = torch.cat([index, torch.full((2, 3), -1)], dim=1)
    torch.testing.assert_close(head(wide, wide_types, wide_index), out)
    torch.testing.assert_close(head(hidden[1:, :3], types[1:, :3], index[1:, :3]), out[1:])
    # a different section type changes the embedding
    assert not torch.allclose(head(hidden, types.roll(1, dims=1), index), out)


def test_head_input_errors():
    head = SectionEncoderHead(8, num_section_types=2, num_layers=1, num_attention_heads=2)
    hidden = torch.zeros(1, 3, 8)
    with pytest.raises(ValueError, match=r"section type ids must lie in \[0, 2\)"):
        head(hidden, torch.tensor([[0, 2, 0]]), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match=r"documents \[0\] have no section tokens"):
        head(hidden, torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), -1))
    with pytest.raises(ValueError, match="must both be"):
        head(hidden, torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))


# --------------------------------------------------------------------------- with a backbone


def test_empty_section_is_exactly_cls_sep(encoder):
    batch = encoder.tokenize(DOCUMENTS)
    tokenizer = encoder.tokenizer
    ids = [
        row[mask.bool()].tolist()
        for row, mask in zip(batch.inputs["input_ids"], batch.inputs["attention_mask"], strict=True)
    ]
    cls_sep = [tokenizer.cls_token_id, tokenizer.sep_token_id]
    assert ids[2] == cls_sep and ids[5] == cls_sep  # "" and "  "
    assert ids[1] == [
        tokenizer.cls_token_id,
        *tokenizer.convert_tokens_to_ids(["python", "sql", "java"]),
        cls_sep[1],
    ]
    assert batch.section_types == [TITLE, SKILLS, LANGUAGES, TITLE, SKILLS, SKILLS]
    assert batch.document_index == [0, 0, 0, 1, 1, 2]


def test_wrapper_equals_sections_encoded_one_by_one(encoder):
    """Batching documents and padding sections changes nothing: each section alone through the backbone,
    concatenated by hand and given to the head, gives the same embedding."""
    encoder.eval()
    batched = encoder(DOCUMENTS)
    assert batched.shape == (3, 32)
    for doc, sections in enumerate(DOCUMENTS):
        tokens, types, index = [], [], []
        for position, (section_type, text) in enumerate(sections):
            inputs = encoder.tokenizer(text, return_tensors="pt")
            with torch.no_grad():
                tokens.append(encoder.backbone(**inputs).last_hidden_state[0])
            types += [section_type] * len(tokens[-1])
            index += [position] * len(tokens[-1])
        manual = encoder.head(torch.cat(tokens)[None], torch.tensor([types]), torch.tensor([index]))
        torch.testing.assert_close(manual[0], batched[doc], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder(DOCUMENTS[::-1]), batched.flip(0), atol=1e-5, rtol=1e-5)
    small_batches = SectionDocumentEncoder(
        encoder.backbone, encoder.tokenizer, encoder.head, backbone_batch_size=4
    )
    torch.testing.assert_close(small_batches(DOCUMENTS), batched, atol=1e-5, rtol=1e-5)


def test_backbone_is_frozen_and_only_the_head_learns(encoder):
    encoder.train()
    assert encoder.head.training and not encoder.backbone.training
    assert not any(module.training for module in encoder.backbone.modules())
    backbone_before = {n: p.detach().clone() for n, p in encoder.backbone.named_parameters()}
    head_before = {n: p.detach().clone() for n, p in encoder.head.named_parameters()}
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.5)
    embeddings = encoder(DOCUMENTS)
    loss = -(embeddings[0] @ embeddings[1])
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in encoder.backbone.parameters())
    assert encoder.head.section_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.head.transformer.parameters())
    optimizer.step()
    assert all(torch.equal(p, backbone_before[n]) for n, p in encoder.backbone.named_parameters())
    assert not torch.equal(encoder.head.section_embedding.weight, head_before["section_embedding.weight"])


def test_wrapper_input_errors(encoder):
    with pytest.raises(ValueError, match="document 1 has no sections"):
        encoder([[(TITLE, "nurse")], []])
    with pytest.raises(ValueError, match=r"document 0, section 1: section type 3 is outside \[0, 3\)"):
        encoder([[(TITLE, "nurse"), (3, "care")]])
    with pytest.raises(TypeError, match="list of documents"):
        encoder("nurse")
    with pytest.raises(ValueError, match="the head expects 16-d tokens, the backbone gives 32"):
        SectionDocumentEncoder(encoder.backbone, encoder.tokenizer, SectionEncoderHead(16, 2))
