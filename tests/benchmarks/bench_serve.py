"""Serving latency: ESCO skill extraction for one sentence against all ESCO skills, in process and over HTTP.

Workload: the distinct sentences of the skill-extraction validation sets
(``benchmarks/skill_extraction/{house,tech}_validation_annotations.csv`` under the data root, in file order;
``--sentences`` keeps the first N), one request per sentence at concurrency 1, cycling through them
``--rounds`` times after ``--warmup`` untimed requests. In process (``--parts in-process``), a request is
the work of ``/v1/extract`` before its threshold: the sentence's token vectors (special tokens dropped,
L2-normalised: :func:`~workembed.retrieval.embedding.query_token_vectors`), their cosines with every skill
vector, the token-attention score ``Σ_i softmax_i(c_i / τ) · c_i`` (τ = ``TEMPERATURE``,
:func:`~workembed.retrieval.skill_extraction.token_attention_scores`) and the top ``TOP_K`` skills. The skill
vectors (ESCO ``--esco`` preferred labels, as the ``esco-skills`` serving space) are computed once per variant
by that variant's encoder and cached on disk under ``--cache-dir``; they are not timed.

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

Over HTTP (``--parts http``): the Serve application of ``serve/config.yaml`` (``build_app``) on a local Ray
(``RAY_CPUS`` logical CPUs) in this process, HTTP on 127.0.0.1, serving a model folder under
``--cache-dir``: the packaged MiniLM (files symlinked) with an ``extraction.json`` of ``--threshold``, in
``--serve-runtime`` with ``--serve-threads`` intra-op threads per replica, ESCO ``--esco``. A request is
``POST /v1/extract`` with ``{"sentences": [one sentence]}``: every skill scored, the threshold, the
redundancy filter and the spans; nothing caches responses. The skill vectors are embedded (or read from the
disk cache) once in this process before Serve starts, so every replica reads them from disk at start-up and
no request embeds them. Each configuration (every ``--replicas`` count of ``Models`` replicas × every
``--max-batch-size`` of its ``@serve.batch``) is deployed afresh and measured:

- ``http.configs.<config>.latency``: ``--warmup`` untimed requests, then ``--rounds`` passes over the
  sentences one request at a time over one keep-alive connection (concurrency 1): ``p50_ms``, ``p99_ms``,
  ``mean_ms``, ``errors`` (failed or malformed answers) and ``same_as_in_process`` (the share of answers
  whose skill ids equal those of the in-process call).
- ``http.configs.<config>.throughput``: ``--http-requests`` requests from ``--concurrency`` client threads,
  each with its own connection, cycling through the sentences: ``requests_per_s``, the latency under that
  load, ``errors`` and ``vs_in_process`` (target ``TARGET_THROUGHPUT_RATIO``).
- ``http.in_process``: the baseline, :meth:`~workembed.serving.runtime.ServedModel.extract` of one sentence
  at a time in this process with the same model, runtime and threads (the work of one request in a
  replica): latency and ``requests_per_s``.
- ``http.best``: the configuration with the highest throughput among those without errors.

The client threads run on the same cores as the server, and take their share of them.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.benchmarks.common import int_list, positive

PARTS = ("in-process", "http")
VARIANTS = ("eager", "onnx-fp32", "onnx-int8")
RUNTIMES = ("torch", "onnx", "onnx-int8")
SENTENCE_FILES = ("house_validation_annotations.csv", "tech_validation_annotations.csv")
FULL_ESCO = "esco/v1.1.1"
TEMPERATURE = 0.05
TOP_K = 10
TARGET_P50_MS = 20.0
TARGET_P99_MS = 60.0
TARGET_AGREEMENT = 0.99
TARGET_THROUGHPUT_RATIO = 0.8
SERVE_APP = "workembed"
HOST = "127.0.0.1"
RAY_CPUS = 4
DEPLOY_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 120.0
DEFAULTS: dict[str, object] = {
    "warmup": 20,
    "rounds": 2,
    "max_length": 128,
    "cache_dir": "~/.cache/workembed/bench-serve",
    "serve_runtime": "onnx",
    "serve_threads": 1,
    "replicas": [1],
    "max_batch_size": [16],
    "batch_wait_s": 0.005,
    "concurrency": 16,
    "http_requests": 640,
    "threshold": 0.6,
}


def log(message: str) -> None:
    print(f"[serve] {message}", file=sys.stderr, flush=True)


def _subset(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: comma-separated names among ``allowed``, in the order of ``allowed``."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = sorted(set(names) - set(allowed))
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"expected names among {', '.join(allowed)}, got {text!r}")
        return [name for name in allowed if name in names]

    return parse


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a threshold in [-1, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument(
        "--parts", type=_subset(PARTS), default=list(PARTS), help=f"comma-separated ({','.join(PARTS)})"
    )
    parser.add_argument("--sentences", type=positive, default=None, help="validation sentences (all)")
    parser.add_argument(
        "--warmup", type=positive, default=d["warmup"], help="untimed requests per run (%(default)s)"
    )
    parser.add_argument(
        "--rounds", type=positive, default=d["rounds"], help="timed passes over the sentences (%(default)s)"
    )
    parser.add_argument(
        "--variants",
        type=_subset(VARIANTS),
        default=list(VARIANTS),
        help=f"in process: comma-separated ({','.join(VARIANTS)})",
    )
    parser.add_argument(
        "--threads",
        type=int_list,
        default=None,
        help="in process: thread counts (default: 1 and the physical cores)",
    )
    parser.add_argument(
        "--max-length", type=positive, default=d["max_length"], help="tokens per text (%(default)s)"
    )
    parser.add_argument("--esco", default=FULL_ESCO, help="ESCO export of the skills (%(default)s)")
    parser.add_argument(
        "--cache-dir",
        default=d["cache_dir"],
        help="skill vectors, ONNX exports, the served model folder (%(default)s)",
    )
    parser.add_argument(
        "--serve-runtime",
        choices=RUNTIMES,
        default=d["serve_runtime"],
        help="HTTP: encoder runtime of the served model (%(default)s)",
    )
    parser.add_argument(
        "--serve-threads",
        type=positive,
        default=d["serve_threads"],
        help="HTTP: intra-op threads per replica (%(default)s)",
    )
    parser.add_argument(
        "--replicas",
        type=int_list,
        default=d["replicas"],
        help="HTTP: comma-separated Models replica counts to compare (1)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int_list,
        default=d["max_batch_size"],
        help="HTTP: comma-separated @serve.batch sizes to compare (16)",
    )
    parser.add_argument(
        "--batch-wait-s",
        type=float,
        default=d["batch_wait_s"],
        help="HTTP: @serve.batch wait for more requests, in seconds (%(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive,
        default=d["concurrency"],
        help="HTTP: client threads of the throughput run (%(default)s)",
    )
    parser.add_argument(
        "--http-requests",
        type=positive,
        default=d["http_requests"],
        help="HTTP: requests of the throughput run (%(default)s)",
    )
    parser.add_argument(
        "--threshold",
        type=_threshold,
        default=d["threshold"],
        help="HTTP: extraction threshold of the served model (%(default)s)",
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
    from workembed.retrieval.embedding import target_embeddings
    from workembed.retrieval.scoring import l2_normalize

    corpus = dict(zip(work.skill_ids, work.skill_texts, strict=True))
    return l2_normalize(target_embeddings(encoder, corpus, cache_dir / "skills" / variant))


def extract_top_k(encoder, skills: np.ndarray, sentence: str) -> tuple[np.ndarray, float, float]:
    """The top ``TOP_K`` skill indices of one sentence by token-attention score, best first, and the seconds
    spent encoding and scoring."""
    from workembed.retrieval.embedding import query_token_vectors
    from workembed.retrieval.scoring import top_k_rows
    from workembed.retrieval.skill_extraction import token_attention_scores

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


# ------------------------------------------------------------------------------------ over HTTP


def served_model_folder(cache_dir: Path, threshold: float) -> Path:
    """``<cache_dir>/model-minilm``: the packaged MiniLM's files (symlinked) and an ``extraction.json`` with
    ``threshold``. Files are rewritten only when they differ: the folder's file stats key the ONNX export
    and the skill-vector cache, which then survive between runs."""
    from workembed.models import resolve_model_path
    from workembed.models.extraction_settings import (
        ExtractionSettings,
        read_extraction_settings,
        write_extraction_settings,
    )

    source = resolve_model_path("minilm").resolve()
    folder = cache_dir / "model-minilm"
    for file in sorted(source.rglob("*")):
        if not file.is_file():
            continue
        link = folder / file.relative_to(source)
        if not (link.is_symlink() and link.resolve() == file.resolve()):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(file.resolve())
    settings = ExtractionSettings(threshold=threshold, temperature=TEMPERATURE)
    if read_extraction_settings(folder) != settings:
        write_extraction_settings(folder, settings)
    return folder


def served_in_process(config, sentences: Sequence[str], *, warmup: int, rounds: int):
    """Latency and throughput of :meth:`~workembed.serving.runtime.ServedModel.extract` of one sentence at a
    time in this process (the work of one request in a replica), and each sentence's skill ids. Loading the
    model embeds its target spaces into the disk cache that the replicas read."""
    from threadpoolctl import threadpool_limits

    from workembed.serving.runtime import ServedModel

    with threadpool_limits(config.threads):  # ServedModel limits this process's BLAS: restore it after
        model = ServedModel(config.model, config)
        model.warm()
        expected = [[skill["id"] for skill in model.extract([sentence])[0]] for sentence in sentences]
        for index in range(warmup):
            model.extract([sentences[index % len(sentences)]])
        seconds = []
        started = time.perf_counter()
        for _ in range(rounds):
            for sentence in sentences:
                request = time.perf_counter()
                model.extract([sentence])
                seconds.append(time.perf_counter() - request)
        elapsed = time.perf_counter() - started
    figures = {
        **percentiles_ms(seconds),
        "requests": len(seconds),
        "requests_per_s": round(len(seconds) / elapsed, 1),
    }
    return figures, expected


@dataclass(frozen=True)
class Reply:
    """One answer of ``/v1/extract``: its seconds and skill ids (None with ``error`` for a failure)."""

    seconds: float
    skills: list[str] | None
    error: str | None = None


class ExtractClient:
    """``POST /v1/extract`` of one sentence at a time over one keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, headers: dict[str, str]):
        self.connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
        self.headers = {"Content-Type": "application/json", **headers}

    def extract(self, sentence: str) -> Reply:
        body = json.dumps({"sentences": [sentence]})
        started = time.perf_counter()
        try:
            self.connection.request("POST", "/v1/extract", body, self.headers)
            response = self.connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as err:
            self.connection.close()
            return Reply(time.perf_counter() - started, None, f"{type(err).__name__}: {err}")
        seconds = time.perf_counter() - started
        if response.status != 200:
            return Reply(seconds, None, f"HTTP {response.status}: {payload[:300].decode(errors='replace')}")
        answered = json.loads(payload)["sentences"]
        if len(answered) != 1 or answered[0]["sentence"] != sentence:
            return Reply(seconds, None, f"answer for other sentences: {[a['sentence'] for a in answered]}")
        return Reply(seconds, [skill["id"] for skill in answered[0]["skills"]])

    def close(self) -> None:
        self.connection.close()


def _errors(replies: Sequence[Reply]) -> dict[str, object]:
    failed = [reply.error for reply in replies if reply.skills is None]
    return {"errors": len(failed), **({"first_error": failed[0]} if failed else {})}


def http_latency(
    port: int,
    headers: dict[str, str],
    sentences: Sequence[str],
    expected: Sequence[list[str]],
    *,
    warmup: int,
    rounds: int,
) -> dict[str, object]:
    """Concurrency 1: ``warmup`` untimed requests, then ``rounds`` passes over ``sentences`` in turn."""
    client = ExtractClient(port, headers)
    try:
        for index in range(warmup):
            client.extract(sentences[index % len(sentences)])
        replies = [client.extract(sentence) for _ in range(rounds) for sentence in sentences]
    finally:
        client.close()
    same = sum(reply.skills == expected[i % len(sentences)] for i, reply in enumerate(replies))
    figures = percentiles_ms([reply.seconds for reply in replies])
    return {
        **figures,
        "requests": len(replies),
        **_errors(replies),
        "same_as_in_process": round(same / len(replies), 4),
        "meets_target": figures["p50_ms"] <= TARGET_P50_MS and figures["p99_ms"] <= TARGET_P99_MS,
    }


def http_throughput(
    port: int, headers: dict[str, str], sentences: Sequence[str], *, concurrency: int, requests: int
) -> dict[str, object]:
    """``requests`` requests from ``concurrency`` threads (request ``i`` by thread ``i mod concurrency``,
    each thread on its own connection), timed from a common start to the last answer."""
    replies: list[list[Reply]] = [[] for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)

    def caller(slot: int) -> None:
        client = ExtractClient(port, headers)
        try:
            start.wait()
            for index in range(slot, requests, concurrency):
                replies[slot].append(client.extract(sentences[index % len(sentences)]))
        finally:
            client.close()

    callers = [threading.Thread(target=caller, args=(slot,), daemon=True) for slot in range(concurrency)]
    for thread in callers:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in callers:
        thread.join()
    elapsed = time.perf_counter() - started
    answered = [reply for replies_of_one in replies for reply in replies_of_one]
    return {
        "concurrency": concurrency,
        "requests": len(answered),
        **_errors(answered),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(answered) / elapsed, 1),
        **percentiles_ms([reply.seconds for reply in answered]),
    }


def serve_document(args: dict[str, object], replicas: int, port: int) -> dict[str, object]:
    """``serve/config.yaml`` with ``args`` as the application's arguments, ``replicas`` Models replicas
    and HTTP on ``HOST:port``."""
    import yaml

    from workembed.config import project_root

    path = project_root() / "serve" / "config.yaml"
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["http_options"] = {**document.get("http_options", {}), "host": HOST, "port": port}
    (app,) = document["applications"]
    app["args"] = args
    models = [deployment for deployment in app["deployments"] if deployment["name"] == "Models"]
    if not models:
        raise ValueError(f"{path}: no 'Models' deployment in applications[0].deployments")
    models[0]["num_replicas"] = replicas
    return document


def best_config(configs: dict[str, dict]) -> str | None:
    """The configuration with the highest throughput (then the lowest p50) among those without errors."""
    clean = [
        name
        for name, config in configs.items()
        if config["latency"]["errors"] == 0 and config["throughput"]["errors"] == 0
    ]
    return max(
        clean,
        key=lambda name: (configs[name]["throughput"]["requests_per_s"], -configs[name]["latency"]["p50_ms"]),
        default=None,
    )


def over_http(
    work: Workload,
    *,
    runtime: str,
    threads: int,
    replicas: Sequence[int],
    max_batch_sizes: Sequence[int],
    batch_wait_s: float,
    concurrency: int,
    requests: int,
    threshold: float,
    warmup: int,
    rounds: int,
    max_length: int,
    esco: str,
    cache_dir: Path,
) -> dict[str, object]:
    """The in-process baseline, then every (replicas, max batch size) configuration deployed and measured
    over HTTP on a local Ray and Serve started and stopped here."""
    import ray
    from ray import serve

    from tests.conftest import free_port
    from tests.serving.deploy import deploy_serve_config
    from workembed.serving.config import ServeConfig

    folder = served_model_folder(cache_dir, threshold)
    config = ServeConfig(
        model=str(folder),
        esco=esco,
        cache_dir=str(cache_dir / "serving"),
        max_length=max_length,
        runtime=runtime,
        threads=threads,
        profiles={"qdrant_path": str(cache_dir / "qdrant")},
    )
    args = config.model_dump(mode="json")
    key = os.environ.get(config.api_key_env) or secrets.token_urlsafe(32)
    os.environ[config.api_key_env] = key  # the local Ray started below passes it to the replicas
    headers = {"X-API-Key": key}
    baseline, expected = served_in_process(config, work.sentences, warmup=warmup, rounds=rounds)
    log(f"in process ({runtime}, {threads} thread(s)): {baseline['requests_per_s']} requests/s")

    configs: dict[str, dict] = {}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": HOST, "port": port})
        for count in replicas:
            for batch in max_batch_sizes:
                name = f"replicas={count},max_batch_size={batch}"
                batching = {**args["batching"], "max_batch_size": batch, "batch_wait_timeout_s": batch_wait_s}
                started = time.monotonic()
                deploy_serve_config(
                    serve_document({**args, "batching": batching}, count, port), SERVE_APP, DEPLOY_TIMEOUT_S
                )
                deploy_s = round(time.monotonic() - started, 1)
                try:
                    latency = http_latency(
                        port, headers, work.sentences, expected, warmup=warmup, rounds=rounds
                    )
                    throughput = http_throughput(
                        port, headers, work.sentences, concurrency=concurrency, requests=requests
                    )
                finally:
                    serve.delete(SERVE_APP)
                ratio = throughput["requests_per_s"] / baseline["requests_per_s"]
                throughput["vs_in_process"] = round(ratio, 3)
                throughput["meets_target"] = ratio >= TARGET_THROUGHPUT_RATIO and throughput["errors"] == 0
                configs[name] = {
                    "replicas": count,
                    "max_batch_size": batch,
                    "batch_wait_s": batch_wait_s,
                    "deploy_s": deploy_s,
                    "latency": latency,
                    "throughput": throughput,
                }
                log(
                    f"{name}: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms; {concurrency} callers: "
                    f"{throughput['requests_per_s']} requests/s "
                    f"({throughput['vs_in_process']} of in process), "
                    f"errors {latency['errors'] + throughput['errors']}"
                )
    finally:
        serve.shutdown()
        ray.shutdown()
    return {
        "model": str(folder),
        "runtime": runtime,
        "threads": threads,
        "threshold": threshold,
        "ray_cpus": RAY_CPUS,
        "concurrency": concurrency,
        "throughput_requests": requests,
        "in_process": baseline,
        "configs": configs,
        "best": best_config(configs),
    }


# ------------------------------------------------------------------------------------ report


def _aligned(rows: Sequence[Sequence[object]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    )


def table(figures: dict[str, object]) -> str:
    """The in-process figures as a text table: one row per (variant, threads)."""
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
    return _aligned(rows)


def http_table(served: dict[str, object]) -> str:
    """The HTTP figures as a text table: the in-process baseline, then one row per configuration
    (latency at concurrency 1; throughput, its latency and its ratio to the baseline at concurrency N)."""
    base, n = served["in_process"], served["concurrency"]
    header = ("", "replicas", "batch", "p50 ms", "p99 ms", "mean ms", f"req/s@{n}", f"p50@{n}", f"p99@{n}")
    header += ("errors", "vs in-proc", "= in-proc")
    rows = [header]
    rows.append(
        ("in process (1 caller)", "-", "-", *(f"{base[key]:.2f}" for key in ("p50_ms", "p99_ms", "mean_ms")))
        + (f"{base['requests_per_s']:.1f}", "-", "-", "-", "1.00", "-")
    )
    for name, config in served["configs"].items():
        latency, throughput = config["latency"], config["throughput"]
        rows.append(
            (
                "http" + (" (best)" if name == served["best"] else ""),
                config["replicas"],
                config["max_batch_size"],
                *(f"{latency[key]:.2f}" for key in ("p50_ms", "p99_ms", "mean_ms")),
                f"{throughput['requests_per_s']:.1f}",
                f"{throughput['p50_ms']:.2f}",
                f"{throughput['p99_ms']:.2f}",
                latency["errors"] + throughput["errors"],
                f"{throughput['vs_in_process']:.2f}",
                f"{latency['same_as_in_process']:.1%}",
            )
        )
    return _aligned(rows)


def run(
    sentences: int | None = None,
    warmup: int = DEFAULTS["warmup"],
    rounds: int = DEFAULTS["rounds"],
    variants: Sequence[str] = VARIANTS,
    threads: Sequence[int] | None = None,
    max_length: int = DEFAULTS["max_length"],
    esco: str = FULL_ESCO,
    cache_dir: str = DEFAULTS["cache_dir"],
    parts: Sequence[str] = PARTS,
    serve_runtime: str = DEFAULTS["serve_runtime"],
    serve_threads: int = DEFAULTS["serve_threads"],
    replicas: Sequence[int] = DEFAULTS["replicas"],
    max_batch_size: Sequence[int] = DEFAULTS["max_batch_size"],
    batch_wait_s: float = DEFAULTS["batch_wait_s"],
    concurrency: int = DEFAULTS["concurrency"],
    http_requests: int = DEFAULTS["http_requests"],
    threshold: float = DEFAULTS["threshold"],
) -> dict[str, object]:
    import onnxruntime
    import psutil
    import ray
    import torch

    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        os.environ.setdefault(name, value)
    threads = sorted(set(threads or [1, psutil.cpu_count(logical=False) or os.cpu_count() or 1]))
    cache = Path(cache_dir).expanduser()
    default_threads = torch.get_num_threads()
    started = time.monotonic()
    work = workload(esco, sentences)
    log(f"{len(work.sentences)} sentences, {len(work.skill_ids)} skills from ESCO '{esco}'")
    figures: dict[str, object] = {
        "sizes": {
            "parts": list(parts),
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
        "versions": {"onnxruntime": onnxruntime.__version__, "ray": ray.__version__},
        "targets": {
            "p50_ms": TARGET_P50_MS,
            "p99_ms": TARGET_P99_MS,
            "top10_identical": TARGET_AGREEMENT,
            "throughput_vs_in_process": TARGET_THROUGHPUT_RATIO,
        },
    }
    try:
        if "in-process" in parts:
            latency, ranked = in_process(
                work, variants, threads, warmup=warmup, rounds=rounds, max_length=max_length, cache_dir=cache
            )
            figures["in_process"] = latency
            if "eager" in ranked:
                figures["agreement"] = {
                    variant: agreement(ranked["eager"], ranked[variant])
                    for variant in ranked
                    if variant != "eager"
                }
            log("\n" + table(figures))
        if "http" in parts:
            figures["http"] = over_http(
                work,
                runtime=serve_runtime,
                threads=serve_threads,
                replicas=replicas,
                max_batch_sizes=max_batch_size,
                batch_wait_s=batch_wait_s,
                concurrency=concurrency,
                requests=http_requests,
                threshold=threshold,
                warmup=warmup,
                rounds=rounds,
                max_length=max_length,
                esco=esco,
                cache_dir=cache,
            )
            log("\n" + http_table(figures["http"]))
    finally:
        torch.set_num_threads(default_threads)
    figures["seconds"] = round(time.monotonic() - started, 1)
    return figures
