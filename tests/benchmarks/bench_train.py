"""Training at scale: workembed's trainer versus sentence-transformers' cached MNRL, and peak worker memory.

Data: the ESCO-only training edges of ``--esco`` (``builtin``: the packaged ICT sample; ``esco/v1.1.1``: the
full export under the data root), kept as ``TrainDataConfig`` defaults keep them. Model: the packaged
all-MiniLM-L6-v2 (``resolve_model_path("minilm")``), trained on the CPU, ``--max-length`` tokens per text.

- ``throughput``: pairs/s of ``run_train`` (Ray Train with each of ``--layouts``: ``2x1`` is 2 workers of
  1 CPU (one torch thread each), ``1x2`` one worker of 2 CPUs; DeepSpeed ZeRO-2, fp32, gradient caching with
  ``chunk_size = --chunk``) and of sentence-transformers
  (``CachedMultipleNegativesRankingLoss`` with ``mini_batch_size = --chunk``, AdamW and gradient clipping at
  1.0 in a plain torch loop, this process, torch's default threads) at logical batch ``--compare-batch``,
  ``--steps`` steps each. Both train on the same pairs: the batch of step ``s`` is
  ``EdgeGraph.batch(seed, s, B)`` of the same graph (checked: the graph fingerprint the trainer records
  equals this graph's, and the digest of its batches equals that of the batches given to
  sentence-transformers). A step's time covers, for both, drawing the batch, tokenising it, the cached
  forward/backward passes and the optimizer step. ``pairs_per_s`` is ``B × n / Σ seconds`` over the
  ``n`` steps after the first ``WARMUP_STEPS`` (whose time includes one-off allocations). The trainer's
  per-step times are its own ``pairs_per_s`` metrics (timed on rank 0 around exactly that work, without
  reporting or checkpoints), read back from a throw-away SQLite MLflow store in the temporary folder: Ray
  Train's result keeps only the last report.
- ``memory``: peak memory of the training worker processes (the ``RayTrainWorker`` actors under this
  benchmark's Ray instance) over a run of ``--memory-steps`` steps at each of ``--batch-sizes`` (gradient
  caching, chunk ``--memory-chunk``, tracking off). Its default, 32, is each of the 2 workers' share of the
  smallest batch (64), so that every run encodes full chunks: with a larger chunk the smallest batch would
  hold fewer activations per chunk than the others and the ratio would measure the chunk fill, not growth
  with the batch. ``hwm_rss_mb`` sums each worker's RSS high-water mark as the
  kernel keeps it (``VmHWM``: no spike between samples is missed); ``peak_rss_mb`` is the peak of the
  summed RSS sampled every ``SAMPLE_SECONDS``; ``peak_uss_mb`` / ``peak_pss_mb`` the peaks of the summed
  USS (each worker's own pages, without the libraries both map) and PSS, sampled every
  ``REFRESH_SAMPLES`` samples. ``ratio`` divides the peaks at the largest batch by those at the smallest
  (target: at most ``TARGET_MEMORY_RATIO`` on ``hwm_rss``). ``peak_rss_mb_by_decile`` (per tenth of the
  run) shows when the peak happens; a run's last step is followed by its checkpoint.
  sentence-transformers' peak RSS (its ``VmHWM`` from the model's loading to its last step, in this
  process) is given for reference, with the RSS before the model was loaded.

Ray: a local instance of ``RAY_CPUS`` logical CPUs is started for the trainer runs and shut down at the
end. Every size used is recorded under ``sizes``; ``full_scale`` is true when all of them are the defaults
and the ESCO export is not the built-in sample.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.benchmarks.common import cmdline, int_list, positive
from workembed.taxonomy import BUILTIN
from workembed.train.config import TrainConfig, TrainDataConfig

DEFAULTS: dict[str, object] = {
    "steps": 6,
    "memory_steps": 3,
    "batch_sizes": [64, 512, 4096],
    "compare_batch": 512,
    "chunk": 64,
    "memory_chunk": 32,
    "max_length": 64,
    "layouts": ["2x1", "1x2"],
}
FULL_ESCO = "esco/v1.1.1"
SEED = 0
WARMUP_STEPS = 1
RAY_CPUS = 4
WORKER_TITLE = "RayTrainWorker"
SAMPLE_SECONDS = 0.2
REFRESH_SAMPLES = 5  # the worker processes are looked up again every this many samples
TARGET_RATIO = 1.0
TARGET_MEMORY_RATIO = 1.15
LR = 2e-5
MB = 1 << 20

_clock = {"started": time.monotonic()}  # reset when ``run`` starts


def log(message: str) -> None:
    elapsed = time.monotonic() - _clock["started"]
    print(f"[train {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def _even_list(text: str) -> list[int]:
    values = int_list(text)
    if values[0] < 2 or any(value % 2 for value in values):
        raise argparse.ArgumentTypeError(f"expected even batch sizes (2 workers) of at least 2, got {text!r}")
    return values


def _even(text: str) -> int:
    value = positive(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"expected an even batch size (2 workers), got {value}")
    return value


def _steps(text: str) -> int:
    value = positive(text)
    if value <= WARMUP_STEPS:
        raise argparse.ArgumentTypeError(f"need more than the {WARMUP_STEPS} warm-up step(s), got {value}")
    return value


def parse_layout(layout: str) -> tuple[int, int]:
    """``WORKERSxCPUS`` (e.g. ``2x1``): Ray Train workers and the CPUs (torch threads) of each."""
    workers, _, cpus = layout.partition("x")
    if not (workers.isdigit() and cpus.isdigit() and int(workers) >= 1 and int(cpus) >= 1):
        raise ValueError(f"a layout is WORKERSxCPUS such as 2x1, got {layout!r}")
    return int(workers), int(cpus)


def _layouts(text: str) -> list[str]:
    """Comma-separated layouts, e.g. ``2x1,1x2`` (each checked by :func:`parse_layout`)."""
    layouts = [part.strip() for part in text.split(",") if part.strip()]
    if not layouts:
        raise argparse.ArgumentTypeError("give at least one layout, e.g. 2x1")
    try:
        for layout in layouts:
            parse_layout(layout)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return layouts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument(
        "--steps", type=_steps, default=d["steps"], help="steps of each throughput run (%(default)s)"
    )
    parser.add_argument(
        "--memory-steps",
        type=positive,
        default=d["memory_steps"],
        help="steps of each memory run (%(default)s)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_even_list,
        default=d["batch_sizes"],
        help="logical batches of the memory runs (default: 64,512,4096)",
    )
    parser.add_argument(
        "--compare-batch",
        type=_even,
        default=d["compare_batch"],
        help="logical batch of the throughput comparison (%(default)s)",
    )
    parser.add_argument(
        "--chunk",
        type=positive,
        default=d["chunk"],
        help="texts encoded at a time: the trainer's chunk_size, sentence-transformers' mini_batch_size "
        "(%(default)s)",
    )
    parser.add_argument(
        "--memory-chunk",
        type=positive,
        default=d["memory_chunk"],
        help="chunk_size of the memory runs (%(default)s: each worker's share of batch 64)",
    )
    parser.add_argument(
        "--max-length", type=positive, default=d["max_length"], help="tokens per text (%(default)s)"
    )
    parser.add_argument(
        "--esco",
        default=BUILTIN,
        help=f"ESCO export of the training edges: '{BUILTIN}' (default) or e.g. {FULL_ESCO} (data root)",
    )
    parser.add_argument(
        "--layouts",
        type=_layouts,
        default=d["layouts"],
        help="trainer layouts of the throughput runs, WORKERSxCPUS each (default: 2x1,1x2); the memory "
        "runs use the first",
    )
    parser.add_argument("--skip-st", action="store_true", help="leave out the sentence-transformers run")


# ------------------------------------------------------------------------------------ memory sampling


def training_workers() -> list[psutil.Process]:
    """The Ray Train worker processes under this process (not those of another Ray instance)."""
    return [p for p in psutil.Process().children(recursive=True) if WORKER_TITLE in cmdline(p)]


def status_mb(pid: int | str = "self") -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (the kernel's peak RSS of the process) from ``/proc/<pid>/status``, in MB."""
    figures = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kilobytes = line.split()[:2]
                figures[key.rstrip(":")] = int(kilobytes) / 1024
    return figures


def reset_peak_rss() -> None:
    """Restart this process's ``VmHWM`` from its current RSS (Linux: ``5`` into ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


class WorkerMemory:
    """Summed memory of the training worker processes, sampled in a thread.

    Every ``SAMPLE_SECONDS``: RSS and each worker's RSS high-water mark (``/proc/<pid>/status``, cheap);
    every ``REFRESH_SAMPLES``-th sample also USS and PSS (``smaps_rollup``: a walk of the page tables, too
    costly to repeat as often) and a fresh list of the workers.
    """

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self._interval = interval
        self._rss: list[tuple[float, float]] = []
        self._shared: list[tuple[float, float]] = []  # (uss, pss)
        self._hwm: dict[int, float] = {}
        self._stop = threading.Event()

    def _sample(self, processes: list[psutil.Process], started: float, full: bool) -> None:
        rss = uss = pss = 0.0
        for process in processes:
            try:
                status = status_mb(process.pid)
                if full:
                    info = process.memory_full_info()
                    uss, pss = uss + info.uss / MB, pss + info.pss / MB
            except (OSError, psutil.Error):  # the process ended between listing and reading
                continue
            if "VmRSS" not in status or "VmHWM" not in status:  # exiting: its memory is already released
                continue
            rss += status["VmRSS"]
            self._hwm[process.pid] = max(self._hwm.get(process.pid, 0.0), status["VmHWM"])
        self._rss.append((time.monotonic() - started, rss))
        if full:
            self._shared.append((uss, pss))

    @contextmanager
    def running(self) -> Iterator[None]:
        self._rss, self._shared, self._hwm, started = [], [], {}, time.monotonic()
        self._stop.clear()

        def loop() -> None:
            processes: list[psutil.Process] = []
            count = 0
            while not self._stop.is_set():
                full = count % REFRESH_SAMPLES == 0
                if full or not processes:
                    processes = training_workers()
                self._sample(processes, started, full)
                count += 1
                self._stop.wait(self._interval)

        thread = threading.Thread(target=loop, name="memory-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def peaks(self) -> dict[str, object]:
        """Peak MB (sampled sums, and the sum of the workers' high-water marks), the peak per tenth of the
        run, the worker processes seen and the samples taken."""
        duration = max((t for t, _ in self._rss), default=0.0) or 1.0
        deciles = [0.0] * 10
        for t, rss in self._rss:
            slot = min(int(10 * t / duration), 9)
            deciles[slot] = max(deciles[slot], rss)
        return {
            "peak_rss_mb": round(max((rss for _, rss in self._rss), default=0.0), 1),
            "hwm_rss_mb": round(sum(self._hwm.values()), 1),
            "peak_uss_mb": round(max((uss for uss, _ in self._shared), default=0.0), 1),
            "peak_pss_mb": round(max((pss for _, pss in self._shared), default=0.0), 1),
            "processes_seen": len(self._hwm),
            "samples": len(self._rss),
            "peak_rss_mb_by_decile": [round(value, 1) for value in deciles],
        }


def wait_for_workers_to_exit(timeout: float = 60.0) -> None:
    """A run's worker processes are gone before the next run's sampling starts."""
    deadline = time.monotonic() + timeout
    while training_workers():
        if time.monotonic() > deadline:
            raise RuntimeError(f"training worker processes still alive {timeout:.0f}s after their run")
        time.sleep(0.5)


# ------------------------------------------------------------------------------------ data


def train_config(
    *,
    esco: str,
    batch_size: int,
    steps: int,
    chunk: int,
    max_length: int,
    folder: Path,
    run_name: str,
    layout: str = "2x1",
) -> TrainConfig:
    """The trainer's config of one benchmark run (checkpoint only at the end, no retries, no export)."""
    workers, cpus = parse_layout(layout)
    return TrainConfig.model_validate(
        {
            "run_name": run_name,
            "seed": SEED,
            "steps": steps,
            "batch_size": batch_size,
            "chunk_size": chunk,
            "grad_cache": True,
            "output": None,
            "data": {"esco": esco},
            "model": {"backbone": "minilm", "max_length": max_length},
            "optim": {"lr": LR},
            "deepspeed": {"zero_stage": 2, "precision": "fp32"},
            "scaling": {"num_workers": workers, "use_gpu": False, "cpus_per_worker": cpus},
            "checkpoint": {
                "storage_path": str(folder / "checkpoints"),
                "every_steps": steps,
                "keep_last": 1,
                "max_failures": 0,
            },
            "tracking": {"tracking_uri": None},
        }
    )


def edge_graph(data: TrainDataConfig):
    """The graph every training worker builds from the ESCO edges of ``data``, built here."""
    from workembed.data.config import GraphConfig
    from workembed.data.graph import esco_edges_table
    from workembed.taxonomy import EscoConfig, load_esco_config
    from workembed.train.batches import EdgeGraph

    table = esco_edges_table(load_esco_config(EscoConfig(location=data.esco)), GraphConfig())
    return EdgeGraph(
        table,
        {name: task.weight for name, task in data.tasks.items()},
        origins=data.origins,
        min_weight=data.min_weight,
    )


def batches_digest(digests: list[str]) -> str:
    """The trainer's ``batches_digest`` of a run whose batches have these ``batch_digest`` values."""
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def steady(batch_size: int, seconds: list[float]) -> dict[str, object]:
    """Pairs/s over the steps after the warm-up: ``B × n / Σ seconds``."""
    measured = seconds[WARMUP_STEPS:]
    return {
        "pairs_per_s": round(batch_size * len(measured) / sum(measured), 2),
        "measured_steps": len(measured),
        "step_seconds": [round(value, 3) for value in seconds],
    }


# ------------------------------------------------------------------------------------ runs


def st_run(graph, *, batch_size: int, steps: int, chunk: int, max_length: int) -> dict[str, object]:
    """sentence-transformers' cached MNRL over the trainer's batches, in this process."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from workembed.models.folder import resolve_model_path
    from workembed.train.loop import batch_digest

    reset_peak_rss()
    before = status_mb()["VmRSS"]
    torch.manual_seed(SEED)
    model = SentenceTransformer(str(resolve_model_path("minilm")), device="cpu")
    model.max_seq_length = max_length
    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=chunk)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    model.train()
    seconds, digests = [], []
    for step in range(steps):
        started = time.perf_counter()
        batch = graph.batch(SEED, step, batch_size)
        features = [model.preprocess(batch.left), model.preprocess(batch.right)]
        loss(features, None).backward()  # its backward hook re-encodes the chunks with a graph
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        digests.append(batch_digest(batch))
        log(f"sentence-transformers: step {step + 1}/{steps} in {seconds[-1]:.2f}s")
    peak = status_mb()["VmHWM"]
    del model, loss, optimizer
    gc.collect()
    return {
        **steady(batch_size, seconds),
        "torch_threads": torch.get_num_threads(),
        "batches_digest": batches_digest(digests),
        "peak_rss_mb": round(peak, 1),
        "rss_before_model_mb": round(before, 1),
    }


def trainer_run(config, sampler: WorkerMemory | None = None) -> tuple[dict[str, object], float]:
    """``run_train(config)`` (sampling worker memory when given a sampler): its summary and wall seconds."""
    from workembed.train.trainer import run_train

    wait_for_workers_to_exit()
    started = time.perf_counter()
    if sampler is None:
        summary = run_train(config)
    else:
        with sampler.running():
            summary = run_train(config)
    return summary, time.perf_counter() - started


def trainer_throughput(graph, folder: Path, **sizes) -> dict[str, object]:
    """The trainer's steady pairs/s from its per-step ``pairs_per_s`` metrics (MLflow history)."""
    from mlflow import MlflowClient

    config = train_config(folder=folder, run_name=f"bench-throughput-{sizes['layout']}", **sizes)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(config.tracking.experiment) is None:
        client.create_experiment(config.tracking.experiment, artifact_location=str(folder / "artifacts"))
    config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"tracking_uri": uri})})
    summary, wall = trainer_run(config)
    history = sorted(client.get_metric_history(summary["mlflow_run_id"], "pairs_per_s"), key=lambda m: m.step)
    if [metric.step for metric in history] != list(range(1, config.steps + 1)):
        raise RuntimeError(
            f"MLflow holds pairs_per_s of steps {[m.step for m in history]}, not 1..{config.steps}"
        )
    seconds = [config.batch_size / metric.value for metric in history]
    tags = client.get_run(summary["mlflow_run_id"]).data.tags
    return {
        **steady(config.batch_size, seconds),
        "run_seconds": round(wall, 1),
        "workers": config.scaling.num_workers,
        "cpus_per_worker": config.scaling.cpus_per_worker,
        "zero_stage": config.deepspeed.zero_stage,
        "graph_fingerprint_matches": tags.get("data.fingerprint") == graph.fingerprint(),
        "batches_digest": summary["state"]["batches_digest"],
        "final_loss": summary["metrics"].get("loss"),
    }


def trainer_memory(folder: Path, batch_size: int, **sizes) -> dict[str, object]:
    config = train_config(
        folder=folder, run_name=f"bench-memory-{batch_size}", batch_size=batch_size, **sizes
    )
    sampler = WorkerMemory()
    _, wall = trainer_run(config, sampler)
    memory = sampler.peaks()
    log(
        f"memory: batch {batch_size}, {config.steps} steps in {wall:.0f}s, {memory['processes_seen']} "
        f"worker(s): peak {memory['hwm_rss_mb']:.0f} MB RSS (high-water marks), "
        f"{memory['peak_uss_mb']:.0f} MB USS"
    )
    return {"batch_size": batch_size, "steps": config.steps, "run_seconds": round(wall, 1), **memory}


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A fresh local Ray instance for the trainer runs, shut down after them."""
    import ray

    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


# ------------------------------------------------------------------------------------ the benchmark


def run(
    steps: int = DEFAULTS["steps"],
    memory_steps: int = DEFAULTS["memory_steps"],
    batch_sizes: list[int] | None = None,
    compare_batch: int = DEFAULTS["compare_batch"],
    chunk: int = DEFAULTS["chunk"],
    memory_chunk: int = DEFAULTS["memory_chunk"],
    max_length: int = DEFAULTS["max_length"],
    esco: str = BUILTIN,
    layouts: list[str] | None = None,
    skip_st: bool = False,
) -> dict[str, object]:
    _clock["started"] = time.monotonic()
    for name, value in (
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
    ):
        os.environ.setdefault(name, value)
    batch_sizes = sorted(set(batch_sizes or DEFAULTS["batch_sizes"]))
    sizes = {
        "steps": steps,
        "memory_steps": memory_steps,
        "batch_sizes": batch_sizes,
        "compare_batch": compare_batch,
        "chunk": chunk,
        "memory_chunk": memory_chunk,
        "max_length": max_length,
        "layouts": layouts or DEFAULTS["layouts"],
    }
    figures: dict[str, object] = {
        "sizes": {**sizes, "esco": esco, "skip_st": skip_st, "seed": SEED, "warmup_steps": WARMUP_STEPS},
        "full_scale": sizes == DEFAULTS and esco != BUILTIN and not skip_st,
    }
    timings: dict[str, float] = {}
    common = {"esco": esco, "chunk": chunk, "max_length": max_length, "layout": sizes["layouts"][0]}
    folder = Path(tempfile.mkdtemp(prefix="workembed-bench-train-"))
    try:
        started = time.monotonic()
        graph = edge_graph(TrainDataConfig(esco=esco))
        timings["data"] = round(time.monotonic() - started, 1)
        figures["data"] = {"esco": esco, "edges": len(graph), "kept": graph.summary.kept}
        log(f"data: {len(graph)} training edges from ESCO '{esco}' ({graph.summary.kept})")

        compare = {"batch_size": compare_batch, "chunk_size": chunk, "max_length": max_length, "steps": steps}
        if not skip_st:
            started = time.monotonic()
            reference = st_run(
                graph, batch_size=compare_batch, steps=steps, chunk=chunk, max_length=max_length
            )
            timings["sentence_transformers"] = round(time.monotonic() - started, 1)
            log(f"sentence-transformers: {reference['pairs_per_s']} pairs/s at batch {compare_batch}")

        with local_ray(RAY_CPUS):
            started = time.monotonic()
            ours = {}
            for layout in sizes["layouts"]:
                ours[layout] = trainer_throughput(
                    graph, folder, batch_size=compare_batch, steps=steps, **{**common, "layout": layout}
                )
                log(f"workembed {layout}: {ours[layout]['pairs_per_s']} pairs/s at batch {compare_batch}")
            timings["throughput"] = round(time.monotonic() - started, 1)
            compare["workembed"] = ours
            if not skip_st:
                ratios = {
                    layout: round(run["pairs_per_s"] / reference["pairs_per_s"], 3)
                    for layout, run in ours.items()
                }
                best = max(ratios, key=ratios.get)
                compare.update(
                    {
                        "sentence_transformers": reference,
                        "same_batches": all(
                            run["batches_digest"] == reference["batches_digest"] for run in ours.values()
                        ),
                        "ratio": ratios,
                        "best_layout": best,
                        "target_ratio": TARGET_RATIO,
                        "meets_target": ratios[best] >= TARGET_RATIO,
                    }
                )
            figures["throughput"] = compare

            started = time.monotonic()
            runs = [
                trainer_memory(folder, batch_size, steps=memory_steps, **{**common, "chunk": memory_chunk})
                for batch_size in batch_sizes
            ]
            timings["memory"] = round(time.monotonic() - started, 1)
        smallest, largest = runs[0], runs[-1]
        memory: dict[str, object] = {"chunk_size": memory_chunk, "runs": runs}
        if len(runs) > 1:
            ratio = {
                key: round(largest[f"{key}_mb"] / smallest[f"{key}_mb"], 3)
                for key in ("hwm_rss", "peak_rss", "peak_uss")
            }
            memory.update(
                {
                    "ratio": {"batches": [smallest["batch_size"], largest["batch_size"]], **ratio},
                    "target_ratio": TARGET_MEMORY_RATIO,
                    "meets_target": ratio["hwm_rss"] <= TARGET_MEMORY_RATIO,
                }
            )
        figures["memory"] = memory
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures["phase_seconds"] = timings
    return figures
