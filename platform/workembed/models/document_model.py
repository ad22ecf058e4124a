"""The Malt two-tower document model: section-structured projects and profiles, saved as a model folder.

A project is three sections, ``title``, ``description`` and ``skills`` (its skill list, comma-separated);
a profile is one ``resume`` section (the matching data holds no finer structure for profiles). Both towers
share the frozen backbone and the :class:`~workembed.models.heads.SectionEncoderHead`; the learned section
type embeddings tell them apart. The folder holds the backbone and tokenizer in the Hugging Face layout,
the head's weights (``head.safetensors``) and ``workembed.json`` (``pooling: section``, the head config,
the section types and the section length).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from workembed.errors import ConfigError, InputError
from workembed.models.folder import (
    FORMAT_VERSION,
    load_head_weights,
    read_model_info,
    resolve_model_path,
    save_head_weights,
    write_model_info,
)
from workembed.models.heads import HeadConfig, SectionBatch, SectionDocumentEncoder, build_head
from workembed.models.heads.sections import Document

SECTION_TYPES = ("title", "description", "skills", "resume")
TITLE, DESCRIPTION, SKILLS, RESUME = range(len(SECTION_TYPES))


class MatchingItem(Protocol):
    """A project or a profile (:class:`workembed.retrieval.matching_dataset.Item`)."""

    text: str
    skills: frozenset[str]


def project_document(item: MatchingItem) -> Document:
    """A project's sections: title (the text's first paragraph), description (the rest), skills."""
    title, _, description = item.text.partition("\n\n")
    skills = ", ".join(sorted(item.skills))
    return [(TITLE, title.strip()), (DESCRIPTION, description.strip()), (SKILLS, skills)]


def profile_document(item: MatchingItem) -> Document:
    """A profile's one section: the resume text."""
    return [(RESUME, item.text)]


class DocumentModel(SectionDocumentEncoder):
    """A :class:`SectionDocumentEncoder` that can be built from a backbone, saved and loaded.

    With ``cache_sections`` on (training), the frozen backbone's token vectors of each distinct section
    are computed once and kept: a section seen again (a project drawn at another step) costs no backbone
    pass.
    """

    cache_sections = False

    def section_tokens(self, batch: SectionBatch) -> list[Tensor]:
        if not self.cache_sections:
            return super().section_tokens(batch)
        cache = self.__dict__.setdefault("_section_cache", {})
        ids, real = batch.inputs["input_ids"], batch.inputs["attention_mask"].bool()
        keys = [tuple(ids[row][real[row]].tolist()) for row in range(len(ids))]
        missing = list({key: row for row, key in enumerate(keys) if key not in cache}.values())
        if missing:
            inputs = {name: values[missing] for name, values in batch.inputs.items()}
            fresh = super().section_tokens(SectionBatch(inputs, [], []))
            for row, vectors in zip(missing, fresh, strict=True):
                cache[keys[row]] = vectors
        return [cache[key] for key in keys]

    @classmethod
    def build(
        cls, backbone: str | os.PathLike, head: HeadConfig, max_section_length: int = 128
    ) -> DocumentModel:
        """The frozen ``backbone`` (an alias or a folder) with a new head built from ``head``."""
        from transformers import AutoModel, AutoTokenizer

        if head.name != "section":
            raise ConfigError(f"a document model needs the 'section' head, got '{head.name}'")
        if (head.num_section_types or 0) < len(SECTION_TYPES):
            types = ", ".join(SECTION_TYPES)
            raise ConfigError(f"the section head needs num_section_types >= {len(SECTION_TYPES)} ({types})")
        path = resolve_model_path(backbone)
        try:  # the unused pooler would only take memory
            network = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:
            network = AutoModel.from_pretrained(path)
        model = cls(
            network,
            AutoTokenizer.from_pretrained(path),
            build_head(head, int(network.config.hidden_size)),
            max_section_length=max_section_length,
        )
        model.head_config, model.source = head, str(backbone)
        return model

    @classmethod
    def load(cls, directory: str | os.PathLike) -> DocumentModel:
        """A saved document model folder (see the module docstring)."""
        info = read_model_info(directory)
        if info.get("pooling") != "section":
            raise InputError(f"{directory} is not a section document model (pooling: {info.get('pooling')})")
        model = cls.build(
            directory, HeadConfig.model_validate(info["head"]), int(info.get("max_section_length", 128))
        )
        model.head.load_state_dict(load_head_weights(directory))
        model.source = str(info.get("base_model", directory))
        return model.eval()

    def save(self, directory: str | os.PathLike, info: Mapping[str, Any] | None = None) -> Path:
        """Write the backbone, tokenizer, head weights and ``workembed.json`` (``info`` merged in)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        save_head_weights(out, self.head)
        record = {
            "format_version": FORMAT_VERSION,
            "pooling": "section",
            "head": self.head_config.model_dump(mode="json"),
            "section_types": list(SECTION_TYPES),
            "max_section_length": self.max_section_length,
            "base_model": self.source,
            **(info or {}),
        }
        write_model_info(out, record)
        return out

    def embed(self, documents: Sequence[Document], batch_size: int = 16) -> np.ndarray:
        """L2-normalised document embeddings ``[len(documents), H]`` (inference: dropout off)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                parts = [
                    self(documents[start : start + batch_size]).float().cpu().numpy()
                    for start in range(0, len(documents), batch_size)
                ]
        finally:
            self.train(was_training)
        vectors = np.concatenate(parts) if parts else np.zeros((0, self.head.output_dim), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
