"""Heads chosen by name: the registry and the typed head config.

A head class registers under a name with :func:`register_head`; it declares which :class:`HeadConfig`
fields it reads (``config_fields``), which of them must be given (``required_fields``) and builds itself
with ``from_config(config, hidden_size)``. :class:`HeadConfig` rejects a field that the named head does
not read, so a YAML ``head:`` section never carries silently ignored settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, Protocol, TypeVar

from pydantic import Field, field_validator, model_validator
from torch import nn

from workembed.config import Config

SIDE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class RegisteredHead(Protocol):
    """What a registered head class provides."""

    config_fields: ClassVar[tuple[str, ...]]
    required_fields: ClassVar[tuple[str, ...]]

    @classmethod
    def from_config(cls, config: HeadConfig, hidden_size: int) -> nn.Module: ...


HEADS: dict[str, type[RegisteredHead]] = {}
H = TypeVar("H", bound=type)


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator: make the head buildable as ``HeadConfig(name=name, ...)``."""

    def add(cls: H) -> H:
        if name in HEADS:
            raise ValueError(f"a head named '{name}' is already registered ({HEADS[name].__name__})")
        unknown = set(cls.config_fields) - set(HeadConfig.model_fields)
        if unknown:
            raise ValueError(f"head '{name}' reads unknown HeadConfig fields: {', '.join(sorted(unknown))}")
        HEADS[name] = cls
        return cls

    return add


class HeadConfig(Config):
    """Which head sits on the backbone's token outputs, and its parameters (each applies to some heads)."""

    name: str = Field(
        ...,
        description="Registered head: 'mean', 'late-interaction', 'token-attention', 'projection', "
        "'section' or 'bilstm-attention'.",
    )
    normalize: bool = Field(
        True, description="L2-normalise the output embedding (mean, projection, section, bilstm-attention)."
    )
    temperature: float = Field(
        0.05, gt=0, description="Softmax temperature τ over query tokens (late-interaction, token-attention)."
    )
    sides: dict[str, int] = Field(
        default_factory=dict,
        description="Output dimension of each side's linear projection, e.g. {title: 512, skill: 512} "
        "(projection; required there).",
    )
    input_sides: dict[str, str] = Field(
        default_factory=dict,
        description="Which side encodes each kind of input text at inference, by WorkRB input type "
        "(job_title, skill_name, skill_sentence, brief_string, search_query_string, "
        "candidate_profile_string) or 'default' for texts of any other or no stated kind, e.g. "
        "{job_title: title, skill_name: skill, default: skill} (projection).",
    )
    num_section_types: int | None = Field(
        None, ge=1, description="Number of section types with a learned embedding (section; required there)."
    )
    transformer_layers: int = Field(
        2, ge=1, description="Layers of the head's transformer encoder (section)."
    )
    attention_heads: int = Field(
        4, ge=1, description="Attention heads per transformer layer; must divide the hidden size (section)."
    )
    feedforward_size: int | None = Field(
        None, ge=1, description="Feed-forward width of each transformer layer; null: 4 × hidden (section)."
    )
    lstm_hidden_size: int | None = Field(
        None,
        ge=1,
        description="Hidden size of each LSTM direction; null: half the backbone's hidden size, so the "
        "output has the backbone's width (bilstm-attention).",
    )
    lstm_layers: int = Field(1, ge=1, description="Stacked bidirectional LSTM layers (bilstm-attention).")
    dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Dropout in the transformer layers (section) and between LSTM layers (bilstm-attention).",
    )

    @field_validator("name")
    @classmethod
    def _known_head(cls, value: str) -> str:
        if value not in HEADS:
            raise ValueError(f"unknown head '{value}' (known: {', '.join(sorted(HEADS))})")
        return value

    @field_validator("sides")
    @classmethod
    def _valid_sides(cls, value: dict[str, int]) -> dict[str, int]:
        for side, dim in value.items():
            if not SIDE_NAME.match(side):
                raise ValueError(f"side '{side}' must be a letter followed by letters, digits, '_' or '-'")
            if dim < 1:
                raise ValueError(f"side '{side}' needs an output dimension of at least 1, got {dim}")
        return value

    @model_validator(mode="after")
    def _input_sides_known(self) -> HeadConfig:
        unknown = sorted({side for side in self.input_sides.values() if side not in self.sides})
        if unknown:
            raise ValueError(
                f"input_sides names sides {', '.join(unknown)} that are not in sides "
                f"({', '.join(self.sides) or 'none'})"
            )
        return self

    @model_validator(mode="after")
    def _fields_apply_to_head(self) -> HeadConfig:
        head = HEADS[self.name]
        unused = self.model_fields_set - {"name"} - set(head.config_fields)
        # a dumped config carries every field: only a value other than the default is a stray setting
        stray = sorted(
            f
            for f in unused
            if getattr(self, f) != type(self).model_fields[f].get_default(call_default_factory=True)
        )
        if stray:
            reads = ", ".join(head.config_fields) or "none"
            raise ValueError(f"{', '.join(stray)} not used by head '{self.name}' (its parameters: {reads})")
        missing = [field for field in head.required_fields if not getattr(self, field)]
        if missing:
            raise ValueError(f"head '{self.name}' needs {', '.join(missing)}")
        return self


def build_head(config: HeadConfig, hidden_size: int) -> nn.Module:
    """The head named by ``config``, sized for a backbone with ``hidden_size``-dimensional tokens."""
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be at least 1, got {hidden_size}")
    return HEADS[config.name].from_config(config, hidden_size)
