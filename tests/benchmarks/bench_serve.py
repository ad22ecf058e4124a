"""Serving latency: ESCO skill extraction for one sentence against all ESCO skills, in this process.

Workload: the distinct sentences of the skill-extraction validation sets
(``benchmarks/skill_extraction/{house,tech}_validation_annotations.csv`` under the data root, in file order;
``--sentences`` keeps the first N), one request per sentence at concurrency 1, cycling through them
``--rounds`` times after ``--warmup`` untimed requests. A request is the work of ``/v1/extract`` before its
threshold: the sentence's token vectors (special tokens dropped, L2-normalised:
:func:`~workembed.eval.scoring.query_token_vectors`), their cosines with every skill vector, the
token-attention score ``Σ_i softmax_i(c_i / τ) · c_i`` (τ = ``TEMPERATURE``,
:func:`~workembed.eval.extraction.token_attention_scores`) and the top ``TOP_K`` skills. The skill vectors
(ESCO ``--esco`` preferred labels, as the ``esco-skills`` serving space) are computed once per variant by
that variant's encoder and cached on disk under ``--cache-dir``; they are not timed.

Variants (``--variants``): ``eager`` (:class:`~workembed.models.Encoder`, torch, ``inference_mode``),
``onnx-fp32`` and ``onnx-int8`` (:class:`~workembed.models.onnx_encoder.OnnxEncoder`), each at every thread
count of ``--threads`` (torch threads for ``eager``, ONNX Runtime intra-op threads for the others; the BLAS
threads of the scoring are limited to the same count). All run with ``--max-length`` tokens.

Figures:

- ``in_process.<variant>.<threads>``: latency per request (``p50_ms``, ``p99_ms``, ``mean_ms``), its encoder
  and scoring parts (``encode_p50_ms``, ``score_p50_ms``) and ``requests_per_s`` (requests / total time:
  the in-process throughput of one caller), against the targets ``TARGET_P50_MS`` / ``TARGET_P99_MS``.
- ``agreement.<variant>``: over the sentences, the share whose top-10 list equals the eager model's in
  order (``top10_identical``, target ``TARGET_AGREEMENT``), as a set (``top10_same_set``), and the mean share
  of common skills (``top10_overlap``). Each variant ranks with its own skill vectors, as it would serve.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.benchmarks.common import int_list, positive

VARIANTS = ("eager", "onnx-fp32", "onnx-int8")
SENTENCE_FILES = ("house_validation_annotations.csv", "tech_validation_annotations.csv")
FULL_ESCO = "esco/v1.1.1"
TEMPERATURE = 0.05
TOP_K = 10
TARGET_P50_MS = 20.0
TARGET_P99_MS = 60.0
TARGET_AGREEMENT = 0.99
DEFAULTS: dict[str, object] = {
    "warmup": 20,
    "rounds": 2,
    "max_length": 128,
    "cache_dir": "~/.cache/workembed/bench-serve",
}


def log(message: str) -> None:
    print(f"[serve] {message}", file=sys.stderr, flush=True)


def _variants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected variants among {', '.join(VARIANTS)}, got {text!r}")
    return [name for name in VARIANTS if name in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("--sentences", type=positive, default=None, help="validation sentences (all)")
    parser.add_argument(
        "--warmup", type=positive, default=d["warmup"], help="untimed requests per run (%(default)s)"
    )
    parser.add_argument(
        "--rounds", type=positive, default=d["rounds"], help="timed passes over the sentences (%(default)s)"
    )
    parser.add_argument(
        "--variants", type=_variants, default=list(VARIANTS), help=f"comma-separated ({','.join(VARIANTS)})"
    )
    parser.add_argument(
        "--threads", type=int_list, default=None, help="thread counts (default: 1 and the physical cores)"
    )
    parser.add_argument(
        "--max-length", type=positive, default=d["max_length"], help="tokens per text (%(default)s)"
    )
    parser.add_argument("--esco", default=FULL_ESCO, help="ESCO export of the skills (%(default)s)")
    parser.add_argument(
        "--cache-dir", default=d["cache_dir"], help="skill vectors and ONNX exports (%(default)s)"
    )


# ------------------------------------------------------------------------------------ workload


@dataclass(frozen=True)
class Workload:
    sentences: list[str]
    skill_ids: list[str]
    skill_texts: list[str]


def validation_sentences(limit: int | None = None) -> list[str]:
    """Distinct sentences of the skill-extraction validation files, in file order (the first ``limit``)."""
    from workembed.config import data_root

    root = data_root()
    if root is None:
        raise FileNotFoundError("no data root: ../shared/data is absent and WORKEMBED_DATA_DIR is unset")
    sentences: dict[str, None] = {}
    for name in SENTENCE_FILES:
        path = root / "benchmarks" / "skill_extraction" / name
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if "sentence" not in row:
                    raise ValueError(f"{path}: no 'sentence' column")
                sentences.setdefault(row["sentence"], None)
    return list(sentences)[:limit]


def workload(esco: str, limit: int | None) -> Workload:
    """The sentences and the ESCO skills (id = concept URI, text = preferred label, as ``esco-skills``)."""
    from workembed.taxonomy import load_esco

    skills = load_esco(esco).skills
    return Workload(
        sentences=validation_sentences(limit),
        skill_ids=list(skills),
        skill_texts=[" ".join(skill.preferred_label.split()) for skill in skills.values()],
    )


# ------------------------------------------------------------------------------------ in process


def make_encoder(variant: str, threads: int, max_length: int, cache_dir: Path):
    """The encoder of ``variant`` (``eager``: torch's thread count is set here, process-wide)."""
    if variant == "eager":
        import torch

        from workembed.models import Encoder

        torch.set_num_threads(threads)
        return Encoder("minilm", max_length=max_length)
    from workembed.models.onnx_encoder import OnnxEncoder

    return OnnxEncoder(
        "minilm",
        max_length=max_length,
        quantize=variant == "onnx-int8",
        cache_dir=cache_dir / "onnx",
        threads=threads,
    )


def skill_vectors(encoder, variant: str, work: Workload, cache_dir: Path) -> np.ndarray:
    """L2-normalised skill vectors of ``encoder``, cached per variant (computed once, not timed)."""
    from workembed.eval.scoring import l2_normalize, target_embeddings

    corpus = dict(zip(work.skill_ids, work.skill_texts, strict=True))
    return l2_normalize(target_embeddings(encoder, corpus, cache_dir / "skills" / variant, log))


def extract_top_k(encoder, skills: np.ndarray, sentence: str) -> tuple[np.ndarray, float, float]:
    """The top ``TOP_K`` skill indices of one sentence by token-attention score, best first, and the seconds
    spent encoding and scoring."""
    from workembed.eval.extraction import token_attention_scores
    from workembed.eval.scoring import query_token_vectors, top_k_rows

    started = time.perf_counter()
    (tokens,) = query_token_vectors(encoder, [sentence])
    encoded = time.perf_counter()
    scores = token_attention_scores(tokens @ skills.T, TEMPERATURE)
    indices, _ = top_k_rows(scores[None, :], TOP_K)
    return indices[0], encoded - started, time.perf_counter() - encoded


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "mean_ms": round(float(values.mean()), 2),
    }


def in_process_latency(
    encoder, skills: np.ndarray, sentences: Sequence[str], *, warmup: int, rounds: int
) -> dict[str, object]:
    """Latency of ``extract_top_k`` at concurrency 1, requests cycling through ``sentences``."""
    for index in range(warmup):
        extract_top_k(encoder, skills, sentences[index % len(sentences)])
    total, encode, score = [], [], []
    started = time.perf_counter()
    for _ in range(rounds):
        for sentence in sentences:
            request = time.perf_counter()
            _, encode_s, score_s = extract_top_k(encoder, skills, sentence)
            total.append(time.perf_counter() - request)
            encode.append(encode_s)
            score.append(score_s)
    elapsed = time.perf_counter() - started
    figures = percentiles_ms(total)
    return {
        **figures,
        "encode_p50_ms": round(float(np.percentile(encode, 50)) * 1e3, 2),
        "score_p50_ms": round(float(np.percentile(score, 50)) * 1e3, 2),
        "requests": len(total),
        "requests_per_s": round(len(total) / elapsed, 1),
        "meets_target": figures["p50_ms"] <= TARGET_P50_MS and figures["p99_ms"] <= TARGET_P99_MS,
    }


def rankings(encoder, skills: np.ndarray, sentences: Sequence[str]) -> list[list[int]]:
    """The top ``TOP_K`` skill indices of every sentence."""
    return [extract_top_k(encoder, skills, sentence)[0].tolist() for sentence in sentences]


def agreement(reference: Sequence[Sequence[int]], other: Sequence[Sequence[int]]) -> dict[str, object]:
    """Shares of sentences with the same top-k list (in order, as a set) and the mean share in common."""
    n = len(reference)
    identical = sum(list(a) == list(b) for a, b in zip(reference, other, strict=True)) / n
    same_set = sum(set(a) == set(b) for a, b in zip(reference, other, strict=True)) / n
    overlap = sum(len(set(a) & set(b)) / len(a) for a, b in zip(reference, other, strict=True)) / n
    return {
        "sentences": n,
        "top10_identical": round(identical, 4),
        "top10_same_set": round(same_set, 4),
        "top10_overlap": round(overlap, 4),
        "meets_target": identical >= TARGET_AGREEMENT,
    }


def in_process(
    work: Workload,
    variants: Sequence[str],
    threads: Sequence[int],
    *,
    warmup: int,
    rounds: int,
    max_length: int,
    cache_dir: Path,
) -> tuple[dict[str, object], dict[str, list[list[int]]]]:
    """Latency per variant and thread count, and each variant's rankings of the sentences."""
    from threadpoolctl import threadpool_limits

    latency: dict[str, object] = {}
    ranked: dict[str, list[list[int]]] = {}
    for variant in variants:
        latency[variant] = {}
        skills = None
        for count in sorted(threads, reverse=True):  # the skill vectors are embedded with the most threads
            encoder = make_encoder(variant, count, max_length, cache_dir)
            if skills is None:
                skills = skill_vectors(encoder, variant, work, cache_dir)
            with threadpool_limits(count, user_api="blas"):
                if variant not in ranked:
                    ranked[variant] = rankings(encoder, skills, work.sentences)
                figures = in_process_latency(encoder, skills, work.sentences, warmup=warmup, rounds=rounds)
            latency[variant][str(count)] = figures
            log(f"{variant}, {count} thread(s): p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
    return latency, ranked


# ------------------------------------------------------------------------------------ report


def table(figures: dict[str, object]) -> str:
    """The figures as a text table: one row per (variant, threads)."""
    header = (
        "variant",
        "threads",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "encode p50",
        "score p50",
        "req/s",
        "top-10 =",
    )
    rows = [header]
    agreements = figures.get("agreement", {})
    for variant, by_threads in figures["in_process"].items():
        same = agreements.get(variant, {}).get("top10_identical")
        for count, row in by_threads.items():
            rows.append(
                (
                    variant,
                    count,
                    *(
                        f"{row[key]:.2f}"
                        for key in ("p50_ms", "p99_ms", "mean_ms", "encode_p50_ms", "score_p50_ms")
                    ),
                    f"{row['requests_per_s']:.1f}",
                    "-" if same is None else f"{same:.1%}",
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    )


def run(
    sentences: int | None = None,
    warmup: int = DEFAULTS["warmup"],
    rounds: int = DEFAULTS["rounds"],
    variants: Sequence[str] = VARIANTS,
    threads: Sequence[int] | None = None,
    max_length: int = DEFAULTS["max_length"],
    esco: str = FULL_ESCO,
    cache_dir: str = DEFAULTS["cache_dir"],
) -> dict[str, object]:
    import onnxruntime
    import psutil
    import torch

    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        os.environ.setdefault(name, value)
    threads = sorted(set(threads or [1, psutil.cpu_count(logical=False) or os.cpu_count() or 1]))
    cache = Path(cache_dir).expanduser()
    default_threads = torch.get_num_threads()
    started = time.monotonic()
    work = workload(esco, sentences)
    log(f"{len(work.sentences)} sentences, {len(work.skill_ids)} skills from ESCO '{esco}'")
    try:
        latency, ranked = in_process(
            work, variants, threads, warmup=warmup, rounds=rounds, max_length=max_length, cache_dir=cache
        )
    finally:
        torch.set_num_threads(default_threads)
    figures: dict[str, object] = {
        "sizes": {
            "sentences": len(work.sentences),
            "skills": len(work.skill_ids),
            "esco": esco,
            "warmup": warmup,
            "rounds": rounds,
            "threads": threads,
            "max_length": max_length,
            "temperature": TEMPERATURE,
            "top_k": TOP_K,
        },
        "versions": {"onnxruntime": onnxruntime.__version__},
        "targets": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS, "top10_identical": TARGET_AGREEMENT},
        "in_process": latency,
    }
    if "eager" in ranked:
        figures["agreement"] = {
            variant: agreement(ranked["eager"], ranked[variant]) for variant in ranked if variant != "eager"
        }
    figures["seconds"] = round(time.monotonic() - started, 1)
    log("\n" + table(figures))
    return figures
