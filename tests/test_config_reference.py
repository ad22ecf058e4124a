"""docs/configuration.md is generated from the typed configs, is up to date, and documents every field."""

import importlib
from pathlib import Path

from workembed import config_reference

ROOT = Path(__file__).resolve().parents[1]


def test_reference_is_up_to_date():
    committed = (ROOT / config_reference.REFERENCE).read_text(encoding="utf-8")
    assert committed == config_reference.render(), "run: python -m workembed.config_reference"


def test_every_field_of_every_job_config_has_a_description():
    missing = []
    with config_reference.neutral_environment():
        for _, module, name in config_reference.SECTIONS:
            model = getattr(importlib.import_module(module), name)
            missing += [f"{name}.{key}" for key, _, _, meaning in config_reference.rows(model) if not meaning]
    assert missing == []


def test_nested_lists_and_maps_of_configs_flatten_to_dotted_keys():
    from pydantic import Field

    from workembed.config import Config

    class Leaf(Config):
        """A leaf."""

        size: int = Field(3, description="How big.")

    class Root(Config):
        """The root."""

        one: Leaf = Field(default_factory=Leaf, description="One leaf.")
        many: list[Leaf] = Field(default_factory=list, description="Leaves.")
        named: dict[str, Leaf] = Field(default_factory=dict, description="Leaves by name.")
        mode: str | None = Field(None, description="A | mode.")

    assert list(config_reference.rows(Root)) == [
        ("one", "Leaf", "", "One leaf."),
        ("one.size", "int", "`3`", "How big."),
        ("many", "list[Leaf]", "`[]`", "Leaves."),
        ("many[].size", "int", "`3`", "How big."),
        ("named", "dict[str, Leaf]", "`{}`", "Leaves by name."),
        ("named.<name>.size", "int", "`3`", "How big."),
        ("mode", "str \\| null", "`null`", "A | mode."),
    ]
