"""The :class:`~workembed.models.Encoder` interface on ONNX Runtime (CPU), optionally with int8 weights.

The model folder's transformer (``AutoModel`` → ``last_hidden_state``) is exported once to ONNX with
dynamic batch and sequence axes (torch's TorchScript exporter, ``dynamo=False``: the dynamo exporter needs
``onnxscript``), and with ``quantize`` its weights are quantized to int8 by ONNX Runtime's dynamic
quantization (per output channel: ``w ≈ s_c · q``, ``q ∈ [−128, 127]``; activations quantized per call).
Exports are cached as ``<cache_dir>/<model>-<hash>/{fp32,int8}.onnx``, the hash covering the model folder's
files (name, size, mtime) and the export format. Exporting and quantizing need the ``onnx`` package; a
cached model needs only ``onnxruntime``.

Tokenization, batching, truncation and pooling are those of :class:`~workembed.models.Encoder`: a fast
tokenizer, batches of texts sorted by length padded to their longest text (one text is never padded),
masked mean pooling, L2 normalisation.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from workembed.errors import ConfigError
from workembed.models.encoder import TokenEmbeddings, encode_batch, length_sorted_batches, token_embeddings
from workembed.models.folder import MINILM, has_head_weights, read_model_info, resolve_model_path

DEFAULT_CACHE_DIR = "~/.cache/workembed/onnx"
EXPORT_FORMAT = "last_hidden_state/opset17/v1"  # part of the cache key: bump when the export changes
OPSET = 17
OUTPUT = "last_hidden_state"


def model_files_hash(path: str | os.PathLike) -> str:
    """SHA-256 over the folder's files (relative name, size, mtime) and :data:`EXPORT_FORMAT`."""
    root = Path(path)
    digest = hashlib.sha256(EXPORT_FORMAT.encode())
    for file in sorted(root.rglob("*")):
        if file.is_file():
            stat = file.stat()
            digest.update(f"\0{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def onnx_cache_folder(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/<folder name>-<hash>``: where the exports of the model folder ``path`` live."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).resolve().name or "model")
    return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / f"{slug}-{model_files_hash(path)[:16]}"


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "exporting or quantizing a model for OnnxEncoder needs the 'onnx' package (pip install onnx)"
        ) from err


class _LastHiddenState(torch.nn.Module):
    """``model(**inputs).last_hidden_state`` with positional inputs named ``names`` (for the exporter)."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, inputs, strict=True))).last_hidden_state


def export_onnx(path: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Export the transformer of model folder ``path`` to ``target`` (written atomically); returns the input
    names: the tokenizer's model inputs that the model's ``forward`` takes."""
    from transformers import AutoModel, AutoTokenizer

    _require_onnx()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # A fresh model: the exporter's tracing leaves the module it traced unfit for later eager use.
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in tokenizer.model_input_names if name in accepted]
    # Two texts of different lengths: the traced graph must handle padding and a batch of several.
    sample = tokenizer(["an example", "a somewhat longer example text"], padding=True, return_tensors="pt")
    partial = Path(target).with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
        torch.onnx.export(
            _LastHiddenState(model, names),
            tuple(sample[name] for name in names),
            str(partial),
            dynamo=False,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT]},
            opset_version=OPSET,
        )
    os.replace(partial, target)
    return names


def quantize_onnx(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Dynamic int8 quantization of ``source`` into ``target`` (signed int8 weights per output channel)."""
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = Path(target).with_suffix(f".{os.getpid()}.tmp")
    quantize_dynamic(Path(source), partial, weight_type=QuantType.QInt8, per_channel=True)
    os.replace(partial, target)


def check_mean_pooling(path: Path) -> None:
    """Refuse a model folder whose embedding needs a trained head (the ONNX graph is the backbone only)."""
    if has_head_weights(path):
        head = read_model_info(path).get("head", {}).get("name")
        raise ConfigError(
            f"model {path} pools with a trained '{head}' head; the ONNX runtimes serve mean-pooling models: "
            "use runtime 'torch'"
        )


class OnnxEncoder:
    """A transformer encoder with mean pooling on ONNX Runtime (CPU); the interface of ``Encoder``. Models
    with a trained pooling head (projection, BiLSTM) run on torch (:class:`~workembed.models.Encoder`)."""

    head = None

    def __init__(
        self,
        name_or_path: str | os.PathLike = MINILM,
        *,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
        normalize: bool = True,
        quantize: bool = True,
        cache_dir: str | os.PathLike | None = None,
        threads: int | None = None,
    ):
        """``threads``: ONNX Runtime intra-op threads (None: its default, one per physical core)."""
        import onnxruntime
        from transformers import AutoConfig, AutoTokenizer

        if str(device) != "cpu":
            raise ConfigError(f"OnnxEncoder runs on the CPU only, got device '{device}'")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        self.name = str(name_or_path)
        self.path = resolve_model_path(name_or_path)
        check_mean_pooling(self.path)
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.quantize = quantize
        self.device = torch.device("cpu")
        self.runtime = "onnx-int8" if quantize else "onnx-fp32"
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._dim = int(AutoConfig.from_pretrained(self.path).hidden_size)
        self.onnx_path = self._cached_export(onnx_cache_folder(self.path, cache_dir))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(self.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self._input_names = [node.name for node in self.session.get_inputs()]

    def _cached_export(self, folder: Path) -> Path:
        """The cached fp32 or int8 ONNX file of this model, exported / quantized first when absent."""
        folder.mkdir(parents=True, exist_ok=True)
        fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
        if not fp32.is_file() and not (self.quantize and int8.is_file()):
            export_onnx(self.path, fp32)
        if not self.quantize:
            return fp32
        if not int8.is_file():
            quantize_onnx(fp32, int8)
        return int8

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def output_dim(self) -> int:
        return self._dim

    def side(self, kind: str | None = None) -> None:
        """Mean-pooling models have no sides."""
        return None

    def embed(self, texts: Sequence[str], kind: str | None = None) -> np.ndarray:
        """Mean-pooled embeddings ``[len(texts), dim]`` (L2-normalised when ``normalize``); ``kind`` is
        accepted for the interface of ``Encoder`` and has no effect."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for index, hidden, mask, _ in self._batches(texts):
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
            if self.normalize:
                pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            out[index] = pooled
        return out

    def embed_tokens(self, texts: Sequence[str]) -> list[TokenEmbeddings]:
        """Per-token embeddings (padding removed) with their character offsets."""
        results: list[TokenEmbeddings | None] = [None] * len(texts)
        for index, hidden, mask, encoded in self._batches(texts, offsets=True):
            for row, text_index in enumerate(index):
                length = int(mask[row].sum())
                results[text_index] = token_embeddings(
                    self.tokenizer, encoded, row, length, hidden[row, :length]
                )
        return results  # type: ignore[return-value]

    def _batches(self, texts: Sequence[str], offsets: bool = False):
        """Yield (original indices, last hidden state, attention mask, encoding) per length-sorted batch."""
        for index in length_sorted_batches(texts, self.batch_size):
            encoded = encode_batch(self.tokenizer, [texts[i] for i in index], self.max_length, offsets, "np")
            feed = {name: encoded[name].astype(np.int64, copy=False) for name in self._input_names}
            (hidden,) = self.session.run([OUTPUT], feed)
            yield index, hidden, encoded["attention_mask"], encoded
