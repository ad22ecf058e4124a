"""Encoders and heads."""

from workembed.models.encoder import Encoder, TokenEmbeddings
from workembed.models.folder import MINILM, resolve_model_path

__all__ = ["MINILM", "Encoder", "TokenEmbeddings", "resolve_model_path"]
