"""Fixtures of the model tests."""

import pytest
import torch


@pytest.fixture(scope="session")
def save_tiny_bert():
    """``save(path, vocab)``: a randomly initialised BERT (hidden 32, 2 layers, seed 0) with a WordPiece
    tokenizer over ``vocab``, saved to ``path``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    def save(path, vocab: list[str]):
        torch.manual_seed(0)
        BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(path)
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        BertModel(config, add_pooling_layer=False).save_pretrained(path)
        return path

    return save
