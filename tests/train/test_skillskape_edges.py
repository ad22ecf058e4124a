"""SkillSkape sentences as skill-sentence training edges, and the training config that asks for them."""

import pandas as pd
import pytest
from pydantic import ValidationError

from workembed.data.graph import SYNTHETIC, skillskape_edges_table
from workembed.taxonomy import BUILTIN, EscoConfig, load_esco_config
from workembed.train.config import TrainConfig


def test_each_sentence_gives_an_edge_to_each_known_skill(tmp_path):
    taxonomy = load_esco_config(EscoConfig(location=BUILTIN))
    (first_uri, first), (second_uri, second) = list(taxonomy.skills.items())[:2]
    path = tmp_path / "train.csv"
    pd.DataFrame(
        {
            "sentence": ["Uses both skills daily.", "Only the second, in capitals.", "Nothing known here."],
            "skills": [
                str([first.preferred_label, second.preferred_label]),
                str([second.preferred_label.upper()]),
                str(["UNK", "not an esco skill"]),
            ],
        }
    ).to_csv(path)
    table, summary = skillskape_edges_table(path, taxonomy)
    rows = table.to_pylist()
    assert sorted((r["left_text"], r["right_id"]) for r in rows) == sorted(
        [
            ("Uses both skills daily.", first_uri),
            ("Uses both skills daily.", second_uri),
            ("Only the second, in capitals.", second_uri),
        ]
    )
    assert {r["task"] for r in rows} == {"skill-sentence"} and {r["origin"] for r in rows} == {SYNTHETIC}
    assert summary["sentences"] == 2 and summary["edges"] == 3
    assert summary["unknown_labels"] == {"not an esco skill": 1}


def test_skillskape_edges_need_an_esco_export():
    with pytest.raises(ValidationError, match="give an `esco` export"):
        TrainConfig.model_validate(
            {"data": {"edges": ["x"], "skillskape": "benchmarks/skillskape/train.csv"}}
        )
