"""The MLflow pyfunc of a registered version: it embeds texts, or ranks candidate texts for them.

Input: a DataFrame with a string column ``text``. Without params (or with no ``candidates``) the output has
one column ``embedding``: each text's pooled embedding (L2-normalised unless the model folder's
``workembed.json`` says otherwise) as a list of floats. With params ``{"candidates": [...], "k": K}`` it has
``candidates`` (each text's K best candidates by cosine of pooled embeddings, best first) and ``scores``.

The model folder is the pyfunc's artifact ``model``; the class is pickled by reference, so loading the
pyfunc needs ``workembed`` importable (as the serving image has it).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from workembed.errors import InputError

MODEL_ARTIFACT = "model"
PIP_PACKAGES = ("torch", "transformers", "numpy", "mlflow")
DEFAULT_K = 10


def pip_requirements() -> list[str]:
    """The pinned packages the pyfunc needs, at the versions installed here."""
    return [f"{package}=={version(package)}" for package in PIP_PACKAGES]


def signature():
    """Input column ``text``; output ``embedding`` or ``candidates`` and ``scores``; params
    ``candidates`` and ``k``."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "text")]),
        outputs=Schema(
            [
                ColSpec(Array(DataType.float), "embedding", required=False),
                ColSpec(Array(DataType.string), "candidates", required=False),
                ColSpec(Array(DataType.float), "scores", required=False),
            ]
        ),
        params=ParamSchema(
            [ParamSpec("candidates", DataType.string, [], (-1,)), ParamSpec("k", DataType.long, DEFAULT_K)]
        ),
    )


class EncoderPyfunc(mlflow.pyfunc.PythonModel):
    """A :class:`workembed.models.Encoder` over the artifact ``model`` (see the module docstring)."""

    def load_context(self, context) -> None:
        from workembed.models import Encoder
        from workembed.models.folder import read_model_info

        path = context.artifacts[MODEL_ARTIFACT]
        info = read_model_info(path)
        self.encoder = Encoder(
            path, max_length=int(info.get("max_length", 256)), normalize=bool(info.get("normalize", True))
        )

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        texts = [str(text) for text in model_input["text"]]
        params = params or {}
        candidates = [str(text) for text in params.get("candidates") or []]
        if not candidates:
            return pd.DataFrame({"embedding": [row.tolist() for row in self.encoder.embed(texts)]})
        k = int(params.get("k", DEFAULT_K))
        if k < 1:
            raise InputError(f"params.k must be at least 1, got {k}")
        return pd.DataFrame(rank(self.encoder.embed(texts), self.encoder.embed(candidates), candidates, k))


def rank(queries: np.ndarray, targets: np.ndarray, labels: list[str], k: int) -> dict[str, list]:
    """Per query row, the ``k`` best ``labels`` by cosine and their scores, best first."""
    from workembed.retrieval.scoring import dense_top_k, l2_normalize

    indices, scores = dense_top_k(l2_normalize(queries), l2_normalize(targets), k)
    return {
        "candidates": [[labels[j] for j in row] for row in indices],
        "scores": [row.tolist() for row in scores],
    }
