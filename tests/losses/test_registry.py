"""Losses picked by name, from code and from a config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workembed.losses import (
    LOSSES,
    AdjacencyInfoNCELoss,
    AdjacencyTripletLoss,
    BipartiteInfoNCELoss,
    LossConfig,
    build_loss,
)


def test_registered_names():
    assert LOSSES == {
        "bipartite-infonce": BipartiteInfoNCELoss,
        "adjacency-infonce": AdjacencyInfoNCELoss,
        "adjacency-triplet": AdjacencyTripletLoss,
    }


def test_build_by_name_with_parameters():
    loss = build_loss("bipartite-infonce", temperature=[0.05, 0.1], task_names=["skill-job", "skill-alt"])
    assert loss.temperatures == (0.05, 0.1) and loss.task_names == ("skill-job", "skill-alt")
    assert build_loss("adjacency-triplet", margin=0.3).margin == 0.3


def test_unknown_name_or_parameter_is_rejected():
    with pytest.raises(ValueError, match="unknown loss 'infonce'"):
        build_loss("infonce")
    with pytest.raises(ValueError, match="no parameter scale .*takes temperature"):
        build_loss("adjacency-infonce", scale=20)


def test_config_validates_name_and_parameters():
    config = LossConfig.model_validate({"name": "adjacency-infonce", "params": {"temperature": 0.1}})
    assert config.build().temperature == 0.1
    with pytest.raises(ValidationError, match="unknown loss"):
        LossConfig.model_validate({"name": "nope"})
    with pytest.raises(ValidationError, match="temperature must be positive"):
        LossConfig.model_validate({"name": "adjacency-infonce", "params": {"temperature": 0}})
