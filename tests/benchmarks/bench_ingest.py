"""Ingest at scale: throughput, memory and grounding overhead of the Ray Data pipeline on synthetic NHS ads.

Data: N synthetic ads made from the 14,842 real NHS ads (``job_ads/nhs_uk_en.parquet`` under the data root).
Each synthetic ad takes the sentences of 2 or 3 random real ads (each sentence kept with probability 1/k, so
an ad is about as long as a real one), shuffles them and replaces about 10% of the words by words drawn from
the corpus; title, date and the other columns come from the first parent, ``id`` is unique. Ad ``i`` depends
only on the seed and ``i``. The ads are written as Parquet files (``--file-rows`` rows each, the NHS columns)
to a temporary folder, cut so that every scale measured is a prefix of the files. Near-duplicates (MinHash
LSH, ``DedupeConfig`` defaults) must stay rare: the survival rate (ads out of dedupe / ads into dedupe) is
measured by the pipeline itself and reported.

Phases (``--phases``, all by default):

- ``throughput``: ads/s of ``clean_stream`` (read → parse/validate, MinHash, segment → ad and sentence
  dedupe) over ``--ads`` ads on a fresh local ``ray.init(num_cpus=--ray-cpus)``, consumed on the
  driver block by block (each counted, then dropped; nothing accumulates), versus a single-process
  baseline that reads the same files with pandas and calls the same per-record functions in a loop
  (``parquet_rows_to_raw``, ``AdPreparer.prepare``, ``Deduplicator.dedupe``; blocks of
  ``BASELINE_ROWS``). ``steady_ads_per_s`` leaves out the first output block, whose time includes starting
  the actors (an approximation: later blocks were already under way).
  The baseline also gives the pickled size of the dedupe indexes once they have seen each
  ``--memory-scales`` prefix.
- ``memory``: peak memory of ``clean_stream`` at each of ``--memory-scales`` (the throughput run is reused for
  the scale equal to ``--ads``), and ``validate``: of read + ``RecordParser`` only at ``--validate-scale``.
  A background thread samples, every ``SAMPLE_SECONDS``, the summed RSS of the driver and the Ray workers of
  this instance (processes under its raylet or titled ``ray::``), and on every ``FULL_SAMPLE_EVERY``-th
  sample their PSS (shared pages such as the object store's counted once) and USS (private memory), which
  need a page-table walk per process and would slow the measured run if taken every time; all minus the idle
  level measured after ``ray.init``; ``all_rss`` adds the Ray system processes (raylet, GCS). USS is what
  the processes hold themselves, the figure that must stay flat. The shared part is mostly the object
  store's shared-memory arena: pages it has touched stay resident after their objects are freed, so it climbs
  towards the arena's size and stays there; the local instance's store is ``--object-store-mb`` (recorded
  as ``object_store_mb``), a bound that does not depend on the input. Ray is restarted for every run.
  ``peak_mb_by_decile`` and ``peak_uss_mb_by_decile`` (peak per tenth of the run's duration) show growth
  within a run; memory per scale shows growth with N (expected: the dedupe indexes only).
- ``ground``: sentences/s of dense grounding through Ray Data (``ground_stream``: ``Grounder`` in an actor
  pool of 1, lexical matching off, titles blanked so that only sentences are embedded) over
  ``--ground-sentences`` sentences of segmented, deduplicated English ads (built with the baseline
  functions), versus the raw loop ``Encoder.embed(sentences) @ skill_vectors.T`` over the same groups of
  256 ads, with as many torch threads as the Ray actor has (and, for reference, with this process's
  default). The Ray figure includes starting the actor and loading the model; ``steady_sentences_per_s``
  leaves the first batch out. ESCO: the built-in sample (ICT skills only, so few or no NHS sentences pass the
  dense threshold; the encoder work does not depend on that). Label embeddings come from the ingest job's
  cache (``ground.cache_dir``) and are computed before the clock starts.

Every size used is recorded under ``sizes``; ``full_scale`` is false unless all of them are the defaults.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import pickle
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from tests.benchmarks.common import cmdline, int_list, positive
from workembed.config import resolve_data_path
from workembed.data.config import ColumnMap, GroundConfig, IngestConfig, SourceConfig
from workembed.data.ingest import (
    AdPreparer,
    Deduplicator,
    _counts,
    clean_stream,
    raw_stream,
    stage_table,
)
from workembed.data.read import parquet_rows_to_raw
from workembed.data.records import RecordParser, to_table
from workembed.data.text import split_sentences
from workembed.runs import sum_counts

REAL_ADS = "job_ads/nhs_uk_en.parquet"
SOURCE = "nhs_uk"
COLUMNS = ColumnMap(
    ad_id="id",
    title="title",
    description="description_text",
    posted_at="datePosted",
    meta=["employmentType", "hiringOrganization", "industry"],
)
PHASES = ("throughput", "memory", "validate", "ground")
DEFAULTS: dict[str, object] = {
    "ads": 200_000,
    "memory_scales": [50_000, 200_000],
    "validate_scale": 1_000_000,
    "ground_sentences": 20_000,
    "file_rows": 20_000,
    "seed": 0,
    "ray_cpus": 4,
    "object_store_mb": 2048,
    "phases": list(PHASES),
}
SWAP_RATE = 0.1
PARENTS = (2, 3)
BASELINE_ROWS = 2000
GROUND_BATCH_ADS = 256  # the batch size ``ground_stream`` gives the Grounder
SAMPLE_SECONDS = 0.5
FULL_SAMPLE_EVERY = 4  # USS / PSS (a page-table walk per process) on every 4th sample only
TARGET_RATIO = 1.5
TARGET_OVERHEAD = 0.10
MB = 1 << 20

_clock = {"started": time.monotonic()}  # reset when ``run`` starts


def log(message: str) -> None:
    elapsed = time.monotonic() - _clock["started"]
    print(f"[ingest {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def _phases(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"phases are a comma-separated subset of {','.join(PHASES)}")
    return [p for p in PHASES if p in chosen]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument(
        "--ads", type=positive, default=d["ads"], help="ads of the throughput run (%(default)s)"
    )
    parser.add_argument(
        "--memory-scales",
        type=int_list,
        default=d["memory_scales"],
        help="ads of the clean_stream memory runs (default: 50000,200000)",
    )
    parser.add_argument(
        "--validate-scale",
        type=positive,
        default=d["validate_scale"],
        help="ads of the read + validate memory run (%(default)s)",
    )
    parser.add_argument(
        "--ground-sentences",
        type=positive,
        default=d["ground_sentences"],
        help="sentences of the grounding comparison (%(default)s)",
    )
    parser.add_argument(
        "--file-rows",
        type=positive,
        default=d["file_rows"],
        help="rows per synthetic Parquet file (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of the synthetic ads (%(default)s)")
    parser.add_argument(
        "--ray-cpus",
        type=positive,
        default=d["ray_cpus"],
        help="logical CPUs of the local Ray instance (%(default)s)",
    )
    parser.add_argument(
        "--object-store-mb",
        type=positive,
        default=d["object_store_mb"],
        help="object store of the local Ray instance, MiB (%(default)s)",
    )
    parser.add_argument(
        "--phases",
        type=_phases,
        default=d["phases"],
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )


# ------------------------------------------------------------------------------------ synthetic data


class RealAds:
    """The real NHS ads: their columns, and each description as sentences of words."""

    def __init__(self, path: Path):
        table = pq.read_table(path)
        self.schema = table.schema
        self.columns = {name: table[name].to_pylist() for name in table.column_names}
        self.sentences = [
            [sentence.split() for sentence in split_sentences(text or "", min_chars=1, max_chars=1 << 20)]
            for text in self.columns["description_text"]
        ]
        self.usable = [i for i, sentences in enumerate(self.sentences) if sentences]
        # Replacement words follow the corpus' word frequencies.
        self.vocabulary = [word for i in self.usable[:2000] for s in self.sentences[i] for word in s]

    def __len__(self) -> int:
        return len(self.columns["id"])


def _swap_words(words: list[str], rng: random.Random, vocabulary: list[str]) -> str:
    """The sentence with about ``SWAP_RATE`` of its words replaced (geometric gaps between replacements)."""
    out = list(words)
    position = int(rng.expovariate(SWAP_RATE))
    while position < len(out):
        out[position] = vocabulary[rng.randrange(len(vocabulary))]
        position += 1 + int(rng.expovariate(SWAP_RATE))
    return " ".join(out)


def synthetic_ad(real: RealAds, seed: int, index: int) -> dict[str, str | None]:
    rng = random.Random(seed * 1_000_003 + index)
    k = rng.choice(PARENTS)
    parents = [real.usable[rng.randrange(len(real.usable))] for _ in range(k)]
    chosen = []
    for parent in parents:
        own = real.sentences[parent]
        kept = [s for s in own if rng.random() < 1 / k]
        chosen.extend(kept or [own[rng.randrange(len(own))]])
    rng.shuffle(chosen)
    ad = {name: values[parents[0]] for name, values in real.columns.items()}
    ad["id"] = f"syn{seed}-{index:08d}"
    ad["description_text"] = " ".join(_swap_words(s, rng, real.vocabulary) for s in chosen)
    return ad


def file_ranges(boundaries: list[int], file_rows: int) -> list[tuple[int, int]]:
    """``[start, end)`` rows of each file: at most ``file_rows`` rows, every boundary at a file's end."""
    ranges, start = [], 0
    for boundary in sorted(set(boundaries)):
        while start < boundary:
            end = min(start + file_rows, boundary)
            ranges.append((start, end))
            start = end
    return ranges


def write_synthetic(folder: Path, boundaries: list[int], file_rows: int, seed: int) -> dict[str, object]:
    """Write the synthetic ads; returns the file list (in ad order) with their row ranges and sizes."""
    real = RealAds(Path(resolve_data_path(REAL_ADS)))
    log(
        f"data: {len(real)} real ads loaded ({len(real.usable)} with text); writing {max(boundaries)} "
        f"synthetic ads to {folder}"
    )
    files = []
    for number, (start, end) in enumerate(file_ranges(boundaries, file_rows)):
        rows = [synthetic_ad(real, seed, index) for index in range(start, end)]
        path = folder / f"part-{number:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=real.schema), path)
        files.append((path, end))
        if number % 10 == 9:
            log(f"data: {end} ads written")
    return {"real_ads": len(real), "files": files, "bytes": sum(path.stat().st_size for path, _ in files)}


def files_for(files: list[tuple[Path, int]], ads: int) -> list[str]:
    """The prefix of the files that holds exactly the first ``ads`` ads."""
    chosen = [str(path) for path, end in files if end <= ads]
    assert any(end == ads for _, end in files), f"no file ends at {ads} ads"
    return chosen


def ingest_config(files: list[str]) -> IngestConfig:
    source = SourceConfig(name=SOURCE, paths=files, format="parquet", columns=COLUMNS)
    return IngestConfig(sources=[source], ground=GroundConfig(lexical=False))


# ------------------------------------------------------------------------------------ memory sampling


class MemorySampler:
    """Summed memory of this driver and the processes of the Ray instance it started, sampled in a thread."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self._interval = interval
        self._driver = psutil.Process()
        self._samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def measure(self, full: bool = True) -> dict[str, float]:
        """MB: ``rss``/``pss``/``uss``/``shared`` of driver + workers, ``all_rss`` of every process of the
        instance; without ``full`` only the cheap figures (``pss`` and ``uss`` are NaN)."""
        tree = self._driver.children(recursive=True)
        raylets = set()
        for process in tree:
            try:
                if process.name() == "raylet":
                    raylets.add(process.pid)
            except psutil.Error:
                pass
        figures = {"rss": 0.0, "pss": 0.0, "uss": 0.0, "shared": 0.0, "all_rss": 0.0}
        for process in [self._driver, *tree]:
            try:
                worker = (
                    process.pid == self._driver.pid
                    or process.ppid() in raylets
                    or "ray::" in cmdline(process)
                )
                if worker:
                    info = process.memory_full_info() if full else process.memory_info()
                    figures["rss"] += info.rss / MB
                    figures["shared"] += info.shared / MB
                    figures["all_rss"] += info.rss / MB
                    if full:
                        figures["pss"] += info.pss / MB
                        figures["uss"] += info.uss / MB
                else:
                    figures["all_rss"] += process.memory_info().rss / MB
            except psutil.Error:  # the process ended between listing and reading
                pass
        if not full:
            figures["pss"] = figures["uss"] = float("nan")
        return figures

    def idle(self, settle: float = 20.0) -> dict[str, float]:
        """The idle level once Ray's prestarted workers are up (stable within 1% for 3 samples, or after
        ``settle`` seconds)."""
        deadline = time.monotonic() + settle
        history = [self.measure()]
        while time.monotonic() < deadline:
            time.sleep(0.5)
            history.append(self.measure())
            last = [h["rss"] for h in history[-3:]]
            if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
                break
        return history[-1]

    @contextmanager
    def running(self) -> Iterator[None]:
        self._samples, started = [], time.monotonic()
        self._stop.clear()

        def loop() -> None:
            count = 0
            while not self._stop.is_set():
                full = count % FULL_SAMPLE_EVERY == 0
                self._samples.append((time.monotonic() - started, self.measure(full)))
                count += 1
                self._stop.wait(self._interval)

        self._thread = threading.Thread(target=loop, name="memory-sampler", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()

    def peaks(self, idle: dict[str, float]) -> dict[str, object]:
        """Peak MB above the idle level, overall and per tenth of the run."""
        duration = max((t for t, _ in self._samples), default=0.0) or 1.0
        deciles, uss_deciles = [0.0] * 10, [0.0] * 10
        for t, sample in self._samples:
            slot = min(int(10 * t / duration), 9)
            deciles[slot] = max(deciles[slot], sample["rss"] - idle["rss"])
            if not math.isnan(sample["uss"]):
                uss_deciles[slot] = max(uss_deciles[slot], sample["uss"] - idle["uss"])
        peak = {
            key: max((s[key] for _, s in self._samples if not math.isnan(s[key])), default=idle[key])
            for key in idle
        }
        return {
            "peak_rss_mb": round(peak["rss"] - idle["rss"], 1),
            "peak_pss_mb": round(peak["pss"] - idle["pss"], 1),
            "peak_all_rss_mb": round(peak["all_rss"] - idle["all_rss"], 1),
            "peak_uss_mb": round(peak["uss"] - idle["uss"], 1),
            "peak_shared_mb": round(peak["shared"] - idle["shared"], 1),
            "idle_rss_mb": round(idle["rss"], 1),
            "idle_all_rss_mb": round(idle["all_rss"], 1),
            "samples": len(self._samples),
            "peak_mb_by_decile": [round(value, 1) for value in deciles],
            "peak_uss_mb_by_decile": [round(value, 1) for value in uss_deciles],
        }


# ------------------------------------------------------------------------------------ Ray runs


@contextmanager
def local_ray(num_cpus: int, object_store_mb: int | None = None) -> Iterator[object]:
    """A fresh local Ray instance for one run (shut down after it, so the next idle level is clean)."""
    import ray

    ray.init(
        num_cpus=num_cpus,
        object_store_memory=object_store_mb * MB if object_store_mb else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        gc.collect()


def validate_stream(config: IngestConfig):
    """Read + parse/validate only: the reading and parsing of ``clean_stream``, built the same way."""
    from ray.data import ActorPoolStrategy

    return raw_stream(config).map_batches(
        RecordParser,
        fn_constructor_kwargs={
            "sources": config.sources,
            "validation": config.validation,
            "languages": config.segment.detect_languages,
        },
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=config.prepare_actors),
    )


def balance(totals: dict[str, int], reasons: dict[str, int], ads: int) -> dict[str, object]:
    """Per-stage rows in/out, survival through dedupe, and whether every input row came out once."""
    stages = stage_table(totals.get("records", 0), reasons)
    dedupe = next(row for row in stages if row["stage"] == "dedupe")
    rejected = sum(row["rejected"] for row in stages)
    return {
        "records": totals.get("records", 0),
        "ads_out": totals.get("ads", 0),
        "rows_balance_ok": totals.get("records") == ads and totals.get("ads", 0) + rejected == ads,
        "dedupe_in": dedupe["in"],
        "dedupe_out": dedupe["out"],
        "survival": round(dedupe["out"] / dedupe["in"], 4) if dedupe["in"] else None,
        "sentences": {
            k: totals.get(k, 0) for k in ("sentences_segmented", "sentences_duplicate", "sentences")
        },
        "stages": stages,
    }


def stream_counts(ds, key: str) -> dict[str, object]:
    """Consume ``ds`` on the driver block by block (each block is counted, then dropped), noting when each
    count arrives.

    The count runs on the driver rather than as one more map operator: such an operator gets its own share
    of the object-store budget, and when that share is spent the blocks waiting for it stall the stream
    for minutes. ``steady_per_s`` leaves out the first output block (whose time includes starting the
    actors) and is None when there was a single block.
    """
    arrivals, started = [], time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
        arrivals.append((time.perf_counter() - started, _counts(batch).to_pylist()[0]))
    seconds = time.perf_counter() - started
    rows = [row for _, row in arrivals]
    totals, reasons = sum_counts(rows, "counts"), sum_counts(rows, "reasons")
    first_at = arrivals[0][0] if arrivals else seconds
    first = sum_counts(rows[:1], "counts").get(key, 0)
    steady = (totals.get(key, 0) - first) / (seconds - first_at) if len(arrivals) > 1 else None
    return {
        "seconds": seconds,
        "first_block_s": round(first_at, 1),
        "blocks": len(arrivals),
        "steady_per_s": round(steady, 1) if steady else None,
        "totals": totals,
        "reasons": reasons,
    }


def ray_run(
    files: list[str], ads: int, ray_cpus: int, object_store_mb: int | None = None, validate_only: bool = False
) -> dict[str, object]:
    """One streamed run on a fresh Ray instance: seconds, ads/s, row balance and memory above idle."""
    name = "read + validate" if validate_only else "clean_stream"
    sampler = MemorySampler()
    with local_ray(ray_cpus, object_store_mb) as ray:
        idle = sampler.idle()
        store_mb = round(ray.cluster_resources().get("object_store_memory", 0) / MB)
        config = ingest_config(files)
        ds = validate_stream(config) if validate_only else clean_stream(config)
        log(f"ray: {name} over {ads} ads ({len(files)} files), idle {idle['rss']:.0f} MB")
        with sampler.running():
            counted = stream_counts(ds, "records")
    seconds = counted["seconds"]
    result = {
        "ads": ads,
        "seconds": round(seconds, 1),
        "ads_per_s": round(ads / seconds, 1),
        "first_block_s": counted["first_block_s"],
        "steady_ads_per_s": counted["steady_per_s"],
        **balance(counted["totals"], counted["reasons"], ads),
        "memory": {**sampler.peaks(idle), "object_store_mb": store_mb},
    }
    log(
        f"ray: {name} {ads} ads in {seconds:.1f}s ({ads / seconds:.0f} ads/s), "
        f"peak +{result['memory']['peak_rss_mb']:.0f} MB RSS"
    )
    return result


# ------------------------------------------------------------------------------------ pandas baseline


class BaselinePipeline:
    """The per-record functions of ``clean_stream``, called in a loop in this process."""

    def __init__(self, config: IngestConfig):
        self.preparer = AdPreparer(config)
        self.deduplicator = Deduplicator(config.dedupe)

    @staticmethod
    def read(path: str) -> pa.Table:
        frame = pd.read_parquet(path)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        return table.append_column("path", pa.array([path] * table.num_rows, pa.string()))

    def process(self, rows: pa.Table) -> pa.Table:
        """Parquet rows (with ``path``) → the stream rows ``clean_stream`` would emit for them."""
        raw = parquet_rows_to_raw(rows, source=SOURCE)
        return to_table(self.deduplicator.dedupe(self.preparer.prepare(raw.to_pylist())))

    def file_batches(self, path: str) -> Iterator[pa.Table]:
        table = self.read(path)
        for start in range(0, table.num_rows, BASELINE_ROWS):
            yield self.process(table.slice(start, BASELINE_ROWS))

    def index_bytes(self) -> dict[str, int]:
        return {"dedupe_index_bytes": len(pickle.dumps(self.deduplicator))}


def baseline_run(files: list[tuple[Path, int]], ads: int | None, scales: list[int]) -> dict[str, object]:
    """Timed over the first ``ads`` ads (None: untimed); the dedupe indexes are pickled at each scale."""
    last = max([ads or 0, *scales])
    pipeline = BaselinePipeline(ingest_config(files_for(files, last)))
    log(f"pandas: baseline over {last} ads" + (f", timed over the first {ads}" if ads else ", untimed"))
    rows, indexes, seconds = [], {}, 0.0
    for path, end in files:
        if end > last:
            break
        started = time.perf_counter()
        counts = [_counts(cleaned).to_pylist()[0] for cleaned in pipeline.file_batches(str(path))]
        elapsed = time.perf_counter() - started
        if ads and end <= ads:
            seconds += elapsed
            rows.extend(counts)
        if end in scales:
            indexes[end] = pipeline.index_bytes()
        if end == ads or end in scales:
            log(f"pandas: {end} ads done" + (f", {ads / seconds:.0f} ads/s" if end == ads else ""))
    result: dict[str, object] = {"indexes": indexes}
    if ads:
        totals, reasons = sum_counts(rows, "counts"), sum_counts(rows, "reasons")
        result["run"] = {
            "ads": ads,
            "seconds": round(seconds, 1),
            "ads_per_s": round(ads / seconds, 1),
            **balance(totals, reasons, ads),
        }
    return result


# ------------------------------------------------------------------------------------ grounding


def ground_input(files: list[tuple[Path, int]], sentences: int) -> pa.Table:
    """Segmented, deduplicated English ads (baseline functions) holding ``sentences`` sentences in all.

    Titles are blanked: the Grounder then embeds sentences only, the same work as the raw loop.
    """
    pipeline = BaselinePipeline(ingest_config([str(path) for path, _ in files]))
    chosen, total = [], 0
    for path, _ in files:
        for cleaned in pipeline.file_batches(str(path)):
            for row in cleaned.to_pylist():
                if row["reject_stage"] is None and row["language"] == "en" and row["sentences"]:
                    row["sentences"] = row["sentences"][: sentences - total]
                    row["title"] = ""
                    chosen.append(row)
                    total += len(row["sentences"])
                    if total >= sentences:
                        return to_table(chosen)
    return to_table(chosen)


def _sentence_groups(table: pa.Table) -> list[list[str]]:
    """The sentences of each group of ``GROUND_BATCH_ADS`` ads (one Grounder batch each)."""
    return [
        [s for sentences in table.slice(start, GROUND_BATCH_ADS)["sentences"].to_pylist() for s in sentences]
        for start in range(0, table.num_rows, GROUND_BATCH_ADS)
    ]


def actor_torch_threads(ray) -> int:
    """torch's thread count inside a Ray Data actor with default resources (as the Grounder's)."""

    class TorchThreads:  # local, so that workers get it by value
        def __call__(self, batch: pa.Table) -> pa.Table:
            import torch

            return pa.table({"threads": [torch.get_num_threads()]})

    probe = ray.data.range(1).map_batches(TorchThreads, batch_format="pyarrow", concurrency=1)
    return int(probe.take_all()[0]["threads"])


def ray_ground(table: pa.Table, config: IngestConfig, taxonomy, ray_cpus: int) -> dict[str, object]:
    """Grounding through ``ground_stream`` (one actor); label embeddings are prepared before the clock."""
    from workembed.data.ingest import ground_stream

    sentences = sum(len(group) for group in _sentence_groups(table))
    blocks = [table.slice(start, GROUND_BATCH_ADS) for start in range(0, table.num_rows, GROUND_BATCH_ADS)]
    with local_ray(ray_cpus) as ray:
        threads = actor_torch_threads(ray)
        ds = ground_stream(ray.data.from_arrow(blocks), config, taxonomy)
        log(f"ray: grounding {sentences} sentences of {table.num_rows} ads (actor torch threads: {threads})")
        counted = stream_counts(ds, "sentences")
    seconds, totals = counted["seconds"], counted["totals"]
    log(f"ray: grounded in {seconds:.1f}s ({sentences / seconds:.0f} sentences/s)")
    return {
        "seconds": round(seconds, 1),
        "sentences_per_s": round(sentences / seconds, 1),
        "steady_sentences_per_s": counted["steady_per_s"],
        "first_batch_s": counted["first_block_s"],
        "actor_torch_threads": threads,
        "sentences_out": totals.get("sentences", 0),
        "sentences_with_skill": totals.get("sentences_with_skill", 0),
        "ads_grounded": totals.get("ads_grounded", 0),
    }


def raw_ground(table: pa.Table, config: IngestConfig, taxonomy, threads: int) -> dict[str, object]:
    """``Encoder.embed`` + the product with the skill vectors, over the same groups, ``threads`` threads."""
    import torch

    from workembed.data.ground import embed_space, skill_space
    from workembed.models import Encoder

    groups = _sentence_groups(table)
    sentences = sum(len(group) for group in groups)
    skills = embed_space(skill_space(taxonomy), config.ground).vectors
    encoder = Encoder(
        config.ground.encoder.model,
        batch_size=config.ground.encoder.batch_size,
        max_length=config.ground.encoder.max_length,
        device=config.ground.encoder.device,
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        for group in groups:
            _ = encoder.embed(group) @ skills.T  # the scores the Grounder ranks
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    log(
        f"raw: {sentences} sentences in {seconds:.1f}s with {threads} torch thread(s) "
        f"({sentences / seconds:.0f} sentences/s)"
    )
    return {
        "torch_threads": threads,
        "seconds": round(seconds, 1),
        "sentences_per_s": round(sentences / seconds, 1),
    }


def ground_phase(files: list[tuple[Path, int]], sentences: int, ray_cpus: int) -> dict[str, object]:
    import torch

    from workembed.taxonomy import BUILTIN, load_esco

    taxonomy = load_esco(BUILTIN)
    config = IngestConfig(ground=GroundConfig(lexical=False))
    table = ground_input(files, sentences)
    found = sum(len(group) for group in _sentence_groups(table))
    ray_figures = ray_ground(table, config, taxonomy, ray_cpus)
    threads = ray_figures["actor_torch_threads"]
    raw = raw_ground(table, config, taxonomy, threads)
    default_threads = torch.get_num_threads()
    raw_default = raw if default_threads == threads else raw_ground(table, config, taxonomy, default_threads)
    overhead = 1 - ray_figures["sentences_per_s"] / raw["sentences_per_s"]
    return {
        "sentences": found,
        "ads": table.num_rows,
        "esco": f"{BUILTIN} ({len(taxonomy.skills)} skills)",
        "batch_ads": GROUND_BATCH_ADS,
        "encoder": config.ground.encoder.model_dump(),
        "ray": ray_figures,
        "raw_same_threads": raw,
        "raw_default_threads": raw_default,
        "overhead": round(overhead, 3),
        "overhead_steady": (
            round(1 - ray_figures["steady_sentences_per_s"] / raw["sentences_per_s"], 3)
            if ray_figures["steady_sentences_per_s"]
            else None
        ),
        "overhead_vs_default_threads": round(
            1 - ray_figures["sentences_per_s"] / raw_default["sentences_per_s"], 3
        ),
        "target_overhead": TARGET_OVERHEAD,
    }


# ------------------------------------------------------------------------------------ the benchmark


def run(
    ads: int = DEFAULTS["ads"],
    memory_scales: list[int] | None = None,
    validate_scale: int = DEFAULTS["validate_scale"],
    ground_sentences: int = DEFAULTS["ground_sentences"],
    file_rows: int = DEFAULTS["file_rows"],
    seed: int = DEFAULTS["seed"],
    ray_cpus: int = DEFAULTS["ray_cpus"],
    object_store_mb: int = DEFAULTS["object_store_mb"],
    phases: list[str] | None = None,
) -> dict[str, object]:
    _clock["started"] = time.monotonic()
    for name, value in (
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
    ):
        os.environ.setdefault(name, value)
    memory_scales = sorted(set(memory_scales or DEFAULTS["memory_scales"]))
    phases = [p for p in PHASES if p in (phases or PHASES)]
    sizes = {
        "ads": ads,
        "memory_scales": memory_scales,
        "validate_scale": validate_scale,
        "ground_sentences": ground_sentences,
        "file_rows": file_rows,
        "seed": seed,
        "ray_cpus": ray_cpus,
        "object_store_mb": object_store_mb,
        "phases": phases,
    }
    figures: dict[str, object] = {"sizes": sizes, "full_scale": sizes == DEFAULTS}
    timings: dict[str, float] = {}
    boundaries = [
        ads,
        *(memory_scales if "memory" in phases else []),
        *([validate_scale] if "validate" in phases else []),
    ]
    folder = Path(tempfile.mkdtemp(prefix="workembed-bench-ingest-"))
    try:
        started = time.monotonic()
        data = write_synthetic(folder, boundaries, file_rows, seed)
        files = data.pop("files")
        timings["data"] = round(time.monotonic() - started, 1)
        figures["data"] = {
            "synthetic_ads": max(boundaries),
            "files": len(files),
            "mb": round(data.pop("bytes") / MB, 1),
            "swap_rate": SWAP_RATE,
            "parents": list(PARENTS),
            **data,
        }
        log(f"data: {len(files)} files, {figures['data']['mb']} MB in {timings['data']}s")

        clean_runs: dict[int, dict[str, object]] = {}
        if "throughput" in phases:
            started = time.monotonic()
            run_ray = ray_run(files_for(files, ads), ads, ray_cpus, object_store_mb)
            clean_runs[ads] = {"run": "throughput", **run_ray}
            timings["throughput_ray"] = round(time.monotonic() - started, 1)
        if "memory" in phases:
            started = time.monotonic()
            for scale in memory_scales:
                if scale not in clean_runs:
                    run_ray = ray_run(files_for(files, scale), scale, ray_cpus, object_store_mb)
                    clean_runs[scale] = {"run": "memory", **run_ray}
            timings["memory_ray"] = round(time.monotonic() - started, 1)
        if "validate" in phases:
            started = time.monotonic()
            validate = ray_run(
                files_for(files, validate_scale),
                validate_scale,
                ray_cpus,
                object_store_mb,
                validate_only=True,
            )
            timings["validate_ray"] = round(time.monotonic() - started, 1)
            figures["validate"] = {
                key: validate[key]
                for key in (
                    "ads",
                    "seconds",
                    "ads_per_s",
                    "records",
                    "ads_out",
                    "rows_balance_ok",
                    "stages",
                    "memory",
                )
            }
        if "throughput" in phases or "memory" in phases:
            started = time.monotonic()
            baseline = baseline_run(
                files, ads if "throughput" in phases else None, memory_scales if "memory" in phases else []
            )
            timings["pandas"] = round(time.monotonic() - started, 1)
        if "throughput" in phases:
            ray_figures, pandas_figures = clean_runs[ads], baseline["run"]
            figures["throughput"] = {
                "ads": ads,
                "survival": ray_figures["survival"],
                "ray": ray_figures,
                "pandas": pandas_figures,
                "ratio": round(ray_figures["ads_per_s"] / pandas_figures["ads_per_s"], 3),
                "target_ratio": TARGET_RATIO,
            }
        if "memory" in phases:
            figures["memory"] = [
                {
                    "ads": scale,
                    "run": clean_runs[scale]["run"],
                    "seconds": clean_runs[scale]["seconds"],
                    **clean_runs[scale]["memory"],
                    **baseline["indexes"].get(scale, {}),
                }
                for scale in memory_scales
            ]
        if "ground" in phases:
            started = time.monotonic()
            figures["ground"] = ground_phase(files, ground_sentences, ray_cpus)
            timings["ground"] = round(time.monotonic() - started, 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures["phase_seconds"] = timings
    return figures
