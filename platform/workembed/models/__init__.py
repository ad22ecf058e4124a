"""Encoders and heads."""

from workembed.models.encoder import MINILM, Encoder, TokenEmbeddings, resolve_model_path

__all__ = ["MINILM", "Encoder", "TokenEmbeddings", "resolve_model_path"]
