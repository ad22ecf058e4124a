import shutil

import numpy as np
import pytest

from workembed.models import Encoder
from workembed.models.onnx_encoder import OnnxEncoder, onnx_cache_folder

TEXTS = [
    "Python",
    "We need someone who can write SQL queries to analyse customer data.",
    "Strong knowledge of HTML and CSS (LESS, SCSS) and of Angular, React or similar frameworks",
    "forklift",
    "Friendly nurses care for patients on the ward; night shifts are paid extra.",
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """One export cache for the module: minilm is exported once."""
    return tmp_path_factory.mktemp("onnx-cache")


def test_tiny_bert_matches_eager_encoder(tiny_bert, tmp_path):
    """Same tokens, offsets and special flags; vectors equal to float precision; batches with padding and
    truncation behave as in the eager encoder."""
    eager = Encoder(tiny_bert, max_length=16, batch_size=2)
    ours = OnnxEncoder(tiny_bert, max_length=16, batch_size=2, quantize=False, cache_dir=tmp_path)
    assert (ours.dim, ours.max_length, ours.batch_size, ours.runtime) == (32, 16, 2, "onnx-fp32")
    np.testing.assert_allclose(ours.embed(TEXTS), eager.embed(TEXTS), atol=1e-4)
    for mine, reference in zip(ours.embed_tokens(TEXTS), eager.embed_tokens(TEXTS), strict=True):
        assert mine.tokens == reference.tokens
        assert mine.offsets == reference.offsets
        assert mine.special == reference.special
        assert mine.vectors.dtype == np.float32
        np.testing.assert_allclose(mine.vectors, reference.vectors, atol=1e-4)
    assert max(len(t.tokens) for t in ours.embed_tokens(TEXTS)) == 16  # truncated like the eager encoder


def test_unnormalised_pooling_and_empty_input(tiny_bert, tmp_path):
    eager = Encoder(tiny_bert, normalize=False)
    ours = OnnxEncoder(tiny_bert, normalize=False, quantize=False, cache_dir=tmp_path)
    np.testing.assert_allclose(ours.embed(TEXTS[:2]), eager.embed(TEXTS[:2]), atol=1e-4)
    assert abs(float(np.linalg.norm(ours.embed(["Python"])[0])) - 1.0) > 1e-3
    assert ours.embed([]).shape == (0, 32)
    assert ours.embed_tokens([]) == []
    with pytest.raises(TypeError, match="sequence of strings"):
        ours.embed("not a list")


def test_export_is_cached_per_model_files(tiny_bert, tmp_path):
    """A second encoder reuses the export; quantizing reuses the fp32 export; changed model files get a new
    export."""
    first = OnnxEncoder(tiny_bert, quantize=False, cache_dir=tmp_path)
    exported = first.onnx_path.stat().st_mtime_ns
    again = OnnxEncoder(tiny_bert, quantize=False, cache_dir=tmp_path)
    assert again.onnx_path == first.onnx_path
    assert again.onnx_path.stat().st_mtime_ns == exported

    quantized = OnnxEncoder(tiny_bert, quantize=True, cache_dir=tmp_path)
    assert quantized.onnx_path == first.onnx_path.with_name("int8.onnx")
    assert quantized.runtime == "onnx-int8"
    assert first.onnx_path.stat().st_mtime_ns == exported  # not exported again
    assert sorted(p.name for p in first.onnx_path.parent.iterdir()) == ["fp32.onnx", "int8.onnx"]

    copy = shutil.copytree(tiny_bert, tmp_path / "copy")
    assert onnx_cache_folder(copy, tmp_path) == onnx_cache_folder(copy, tmp_path)
    before = onnx_cache_folder(copy, tmp_path)
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    assert onnx_cache_folder(copy, tmp_path) != before


def test_session_settings_and_bad_arguments(tiny_bert, tmp_path):
    ours = OnnxEncoder(tiny_bert, quantize=False, cache_dir=tmp_path, threads=1)
    assert ours.session.get_session_options().intra_op_num_threads == 1
    assert ours.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="CPU only, got device 'cuda'"):
        OnnxEncoder(tiny_bert, device="cuda", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="threads must be at least 1"):
        OnnxEncoder(tiny_bert, cache_dir=tmp_path, threads=0)


def test_minilm_fp32_matches_eager(minilm, onnx_cache):
    ours = OnnxEncoder("minilm", quantize=False, cache_dir=onnx_cache)
    np.testing.assert_allclose(ours.embed(TEXTS), minilm.embed(TEXTS), atol=1e-4)


@pytest.mark.integration
def test_minilm_int8_stays_close_to_fp32(onnx_cache):
    """Per-channel int8 weights keep every pooled embedding within cosine 0.98 of the fp32 one."""
    fp32 = OnnxEncoder("minilm", quantize=False, cache_dir=onnx_cache)
    int8 = OnnxEncoder("minilm", quantize=True, cache_dir=onnx_cache)
    cosines = (fp32.embed(TEXTS) * int8.embed(TEXTS)).sum(axis=1)
    assert cosines.min() > 0.98
    assert cosines.max() < 1 - 1e-6  # the weights really are quantized
    assert int8.onnx_path.stat().st_size < fp32.onnx_path.stat().st_size / 3
