"""The ``workembed`` command line.

Every command that has settings takes ``-c FILE`` (YAML), ``--profile NAME`` and repeated ``--set key=value``;
command-specific flags are shortcuts for ``--set``. Results go to stdout as JSON, progress and logs to stderr
(``-q`` / ``-v`` before the command: fewer / more of them; ``--log-file FILE``: all of it, libraries too).

An error the user can act on (:class:`workembed.errors.WorkembedError`: a bad config, input, dataset, registry
state) is one line on stderr and exit code 2; any other exception is a bug and shows its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import Field

from workembed.config import Config, add_config_args, config_from_args
from workembed.errors import InputError, WorkembedError
from workembed.logs import add_logging_args, setup_logging_from_args

logger = logging.getLogger("workembed.cli")  # also when run as __main__


class EmbedConfig(Config):
    """Settings of ``workembed embed``."""

    model: str = Field(
        "minilm",
        description="'minilm' (packaged all-MiniLM-L6-v2), a model directory or an MLflow model URI "
        "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH; needs MLFLOW_TRACKING_URI).",
    )
    max_length: int = Field(256, ge=8, description="Tokens per text; longer texts are truncated.")
    batch_size: int = Field(64, ge=1, description="Texts per forward pass.")
    normalize: bool = Field(True, description="L2-normalise pooled embeddings.")


# ------------------------------------------------------------------------------------------- commands


def cmd_esco_stats(args: argparse.Namespace) -> object:
    from workembed.taxonomy import EscoConfig, load_esco_config

    config = config_from_args(
        EscoConfig, args, {"location": args.esco, "translations": args.translations or None}
    )
    return load_esco_config(config).stats()


def cmd_embed(args: argparse.Namespace) -> object:
    from workembed.models import Encoder

    config = config_from_args(EmbedConfig, args, {"model": args.model})
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise InputError("embed: give TEXT arguments or lines on standard input")
    encoder = Encoder(
        config.model, max_length=config.max_length, batch_size=config.batch_size, normalize=config.normalize
    )
    pooled = encoder.embed(texts)
    results = [
        {"text": text, "embedding": vector.tolist()} for text, vector in zip(texts, pooled, strict=True)
    ]
    if args.tokens:
        for result, tokens in zip(results, encoder.embed_tokens(texts), strict=True):
            result["tokens"] = [
                {"token": tok, "start": start, "end": end, "special": special, "vector": vec.tolist()}
                for tok, (start, end), special, vec in zip(
                    tokens.tokens, tokens.offsets, tokens.special, tokens.vectors, strict=True
                )
            ]
    return {"model": config.model, "dim": encoder.dim, "results": results}


def cmd_eval_run(args: argparse.Namespace) -> object:
    from workembed.eval.runner import EvalConfig, run_eval

    shortcuts = {
        "model": args.model,
        "datasets": args.datasets,
        "baselines": True if args.baselines else None,
        "scorer": args.scorer,
        "out": args.out,
    }
    config = config_from_args(EvalConfig, args, shortcuts)
    return run_eval(config)


def cmd_eval_build_tasks(args: argparse.Namespace) -> object:
    from workembed.eval.esco_tasks import BuildTasksConfig, run_build_tasks

    config = config_from_args(BuildTasksConfig, args, {"esco.location": args.esco, "out": args.out})
    return run_build_tasks(config)


def cmd_eval_convert(args: argparse.Namespace) -> object:
    from workembed.eval.converters import ConvertConfig, run_convert

    shortcuts = {"source": args.source, "esco.location": args.esco, "out": args.out}
    return run_convert(config_from_args(ConvertConfig, args, shortcuts))


def cmd_eval_extraction(args: argparse.Namespace) -> object:
    from workembed.eval.extraction_benchmark import ExtractionEvalConfig, run_extraction_eval

    shortcuts = {
        "model": args.model,
        "datasets": args.datasets,
        "calibration_fraction": args.calibration_fraction,
        "k": args.k,
        "among": args.among,
        "out": args.out,
    }
    config = config_from_args(ExtractionEvalConfig, args, shortcuts)
    return run_extraction_eval(config)


def cmd_eval_matching(args: argparse.Namespace) -> object:
    from workembed.eval.matching_eval import MatchingEvalConfig, run_matching_eval

    shortcuts = {
        "model": args.model,
        "data": args.data,
        "baselines": True if args.baselines else None,
        "out": args.out,
    }
    config = config_from_args(MatchingEvalConfig, args, shortcuts)
    return run_matching_eval(config)


def cmd_run(args: argparse.Namespace) -> object:
    from workembed import stages

    return stages.run(args.stage, args)


def cmd_services(args: argparse.Namespace) -> object:
    from workembed import services

    config = config_from_args(services.ServicesConfig, args)
    if args.action == "up":
        urls = services.up(config)
        logger.info("environment for clients: source %s", Path(config.state_dir) / "env")
        return urls
    if args.action == "down":
        return {"stopped": services.down(config)}
    if args.action == "rotate-mlflow-credentials":
        return services.rotate_mlflow_credentials(config)
    return services.status(config)


def registry_config(args: argparse.Namespace):
    from workembed.registry import RegistryConfig

    return config_from_args(RegistryConfig, args, {"name": args.name})


def cmd_models_register(args: argparse.Namespace) -> object:
    from workembed.registry_commands import register_model

    return register_model(
        registry_config(args),
        model_dir=args.model,
        run_id=args.run,
        report=args.report,
    )


def cmd_models_promote(args: argparse.Namespace) -> object:
    from workembed.registry import PromotionRefused
    from workembed.registry_commands import promote

    config = registry_config(args)
    try:
        return promote(config, args.version, args.alias, force=args.force)
    except PromotionRefused as refused:  # the refused decision is the result; the exit code says refused
        json.dump(refused.result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        raise


def cmd_models_list(args: argparse.Namespace) -> object:
    from workembed.registry import list_versions

    return list_versions(registry_config(args))


def cmd_models_show(args: argparse.Namespace) -> object:
    from workembed.registry import show_version

    return show_version(registry_config(args), args.version)


def cmd_models_rollback(args: argparse.Namespace) -> object:
    from workembed.registry import rollback

    return rollback(registry_config(args), args.alias, to=args.to)


# --------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workembed", description=__doc__.splitlines()[0])
    add_logging_args(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    esco = commands.add_parser("esco", help="inspect the ESCO taxonomy")
    esco_commands = esco.add_subparsers(dest="esco_command", required=True, metavar="ESCO_COMMAND")
    stats = esco_commands.add_parser(
        "stats", help="counts of skills, occupations, relations, hierarchy, labels"
    )
    stats.add_argument("--esco", help="ESCO export (zip/folder, local or s3://) or 'builtin'")
    stats.add_argument(
        "--translations", nargs="*", help="language-specific exports to attach (e.g. v1.1.1-fr)"
    )
    add_config_args(stats)
    stats.set_defaults(handler=cmd_esco_stats)

    embed = commands.add_parser("embed", help="embed texts with an encoder (JSON out)")
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (default: lines of stdin)")
    embed.add_argument("--model", help="'minilm' or a model directory")
    embed.add_argument("--tokens", action="store_true", help="also return token-level embeddings")
    add_config_args(embed)
    embed.set_defaults(handler=cmd_embed)

    # `workembed eval` has sub-commands; `eval` followed by an option (or nothing) means `eval run`, so that
    # `workembed eval --model minilm --dataset DIR` works as written (see `with_default_subcommand`).
    evaluation = commands.add_parser(
        "eval",
        help="evaluate encoders on ranking datasets",
        description="`workembed eval --dataset DIR ...` is short for `workembed eval run --dataset DIR ...`.",
    )
    eval_commands = evaluation.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")
    eval_run = eval_commands.add_parser(
        "run", help="rank each dataset's corpus for its queries; MAP, MRR, RP@K, NDCG@10, Recall@100"
    )
    eval_run.add_argument("--model", help="'minilm' or a model directory")
    eval_run.add_argument(
        "--dataset", dest="datasets", action="append", metavar="DIR", help="dataset folder (repeatable)"
    )
    eval_run.add_argument(
        "--baselines", action="store_true", help="also rank with BM25 and char n-gram TF-IDF"
    )
    eval_run.add_argument("--scorer", choices=["cosine", "late-interaction"], help="encoder scoring")
    eval_run.add_argument("--out", help="JSON report path; a Markdown table is written beside it (.md)")
    add_config_args(eval_run)
    eval_run.set_defaults(handler=cmd_eval_run)

    build_tasks = eval_commands.add_parser(
        "build-tasks", help="ESCO ranking tasks (job→skill, skill→job, skill/job normalization) + split.json"
    )
    build_tasks.add_argument("--esco", help="ESCO export (zip/folder, local or s3://) or 'builtin'")
    build_tasks.add_argument("--out", help="output folder (one sub-folder per task)")
    add_config_args(build_tasks)
    build_tasks.set_defaults(handler=cmd_eval_build_tasks)

    convert = eval_commands.add_parser(
        "convert", help="the development benchmarks (skill extraction, SkillSkape, JobBERT, MELO) as datasets"
    )
    convert.add_argument("--source", help="benchmarks folder (default: benchmarks under the data root)")
    convert.add_argument("--esco", help="ESCO release whose labels are the targets")
    convert.add_argument("--out", help="output folder (one sub-folder per dataset)")
    add_config_args(convert)
    convert.set_defaults(handler=cmd_eval_convert)

    extraction = eval_commands.add_parser(
        "extraction", help="ConTeXT-match skill extraction: calibrated threshold, P/R/F1, F1@K, redundancy"
    )
    extraction.add_argument("--model", help="'minilm' or a model directory")
    extraction.add_argument(
        "--dataset",
        dest="datasets",
        action="append",
        metavar="DIR",
        help="skill-extraction dataset folder (repeatable)",
    )
    extraction.add_argument(
        "--calibration-fraction", type=float, help="share of sentences that calibrate the threshold"
    )
    extraction.add_argument("--k", type=int, help="K of F1@K (default 5)")
    extraction.add_argument("--among", choices=["all", "candidates"], help="redundancy filter scope")
    extraction.add_argument(
        "--out", help="JSON report path; Markdown (.md) and <stem>-<dataset>-threshold.png beside it"
    )
    add_config_args(extraction)
    extraction.set_defaults(handler=cmd_eval_extraction)

    matching = eval_commands.add_parser(
        "matching", help="rank resumes for projects; Malt matching metrics at K"
    )
    matching.add_argument("--model", help="'minilm' or a model directory (--set model=null: baselines only)")
    matching.add_argument("--data", help="matching folder or data root (default: <data root>/matching)")
    matching.add_argument(
        "--baselines", action="store_true", help="also rank with BM25, char n-gram TF-IDF and at random"
    )
    matching.add_argument("--out", help="JSON report path; a Markdown table is written beside it (.md)")
    add_config_args(matching)
    matching.set_defaults(handler=cmd_eval_matching)

    from workembed.stages import STAGES

    run = commands.add_parser("run", help="run a pipeline stage: " + ", ".join(STAGES))
    run.add_argument(
        "stage", choices=sorted(STAGES), help="; ".join(f"{s.name}: {s.help}" for s in STAGES.values())
    )
    add_config_args(run)
    add_logging_args(run, after_command=True)
    run.set_defaults(handler=cmd_run)

    add_models_parser(commands)
    add_pipeline_parser(commands)

    svc = commands.add_parser("services", help="local Ray head, MLflow server and S3 server on 127.0.0.1")
    svc.add_argument("action", choices=["up", "down", "status", "rotate-mlflow-credentials"])
    add_config_args(svc)
    svc.set_defaults(handler=cmd_services)
    return parser


def add_models_parser(commands) -> None:
    """``workembed models register|promote|list|show|rollback``: the MLflow model registry."""
    models = commands.add_parser(
        "models", help="the MLflow model registry: register, promote through the gate, list, show, rollback"
    )
    actions = models.add_subparsers(dest="models_command", required=True, metavar="MODELS_COMMAND")

    def action(name: str, summary: str, handler: Callable[[argparse.Namespace], object]):
        parser = actions.add_parser(name, help=summary)
        parser.add_argument("--name", help="registered model name (default workembed)")
        add_config_args(parser)
        parser.set_defaults(handler=handler)
        return parser

    register = action(
        "register",
        "log a model folder or a training run's model as a new version, with lineage tags",
        cmd_models_register,
    )
    source = register.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR", help="model folder (config.json, optional workembed.json)")
    source.add_argument(
        "--run", metavar="RUN_ID", help="MLflow training run whose artifact 'model' is registered"
    )
    register.add_argument("--report", metavar="FILE", help="evaluation report logged with the version")

    promote = action(
        "promote",
        "move ALIAS to VERSION if no gate metric regresses vs the holder (or minilm)",
        cmd_models_promote,
    )
    promote.add_argument("--version", required=True, help="candidate version")
    promote.add_argument("--alias", required=True, help="alias to move, e.g. champion")
    promote.add_argument(
        "--force", action="store_true", help="move the alias even if the gate fails (recorded)"
    )

    action("list", "registered versions with aliases, threshold and lineage summary", cmd_models_list)
    show = action("show", "one version: aliases, source, run, all tags", cmd_models_show)
    show.add_argument("--version", required=True, help="version to show")

    rollback = action(
        "rollback", "move ALIAS back to its previous holder (or --to VERSION)", cmd_models_rollback
    )
    rollback.add_argument("--alias", required=True, help="alias to move back, e.g. champion")
    rollback.add_argument(
        "--to", metavar="VERSION", help="version to move the alias to (default: previous holder)"
    )


DEFAULT_SUBCOMMANDS = {"eval": "run"}


def with_default_subcommand(argv: Sequence[str]) -> list[str]:
    """``eval --dataset D`` → ``eval run --dataset D``: a command with sub-commands followed by an option
    (other than -h/--help) or by nothing gets its default sub-command inserted (after the logging options
    that may come first, e.g. ``-q eval --dataset D``)."""
    args = list(argv)
    at = 0
    while at < len(args) and args[at].startswith("-"):  # -q, -vv, --log-file FILE, --log-file=FILE
        at += 2 if args[at] == "--log-file" else 1
    if at < len(args) and args[at] in DEFAULT_SUBCOMMANDS:
        rest = args[at + 1 :]
        if not rest or (rest[0].startswith("-") and rest[0] not in ("-h", "--help")):
            args.insert(at + 1, DEFAULT_SUBCOMMANDS[args[at]])
    return args


def cmd_pipeline_run(args: argparse.Namespace) -> object:
    from workembed.job_runner import PipelineConfig, run_pipeline

    config = config_from_args(PipelineConfig, args, {"address": args.address, "run_id": args.run_id})
    return run_pipeline(config, resume=args.resume, start=args.start)


def cmd_pipeline_status(args: argparse.Namespace) -> object:
    from workembed.job_runner import PipelineConfig, read_state

    return read_state(config_from_args(PipelineConfig, args), args.run_id)


def add_pipeline_parser(commands) -> None:
    """``workembed pipeline run|status``: the stages as Ray jobs, in order."""
    pipeline = commands.add_parser("pipeline", help="run the pipeline stages as Ray jobs, in order")
    actions = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="PIPELINE_COMMAND")
    run = actions.add_parser("run", help="submit the stages in order, stream their logs, stop at a failure")
    add_config_args(run)
    run.add_argument("--address", help="http://HEAD:8265 or ray://HEAD:10001 (default: $RAY_ADDRESS)")
    run.add_argument("--run-id", help="id of a new run (default: pipeline-<UTC time>)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue this run; stages that succeeded are kept")
    run.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage (with --resume)")
    run.set_defaults(handler=cmd_pipeline_run)
    status = actions.add_parser("status", help="the recorded state of a run (stages, job ids, status)")
    add_config_args(status)
    status.add_argument("--run-id", required=True, help="pipeline run id")
    status.set_defaults(handler=cmd_pipeline_status)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(with_default_subcommand(argv))
    setup_logging_from_args(args)
    handler: Callable[[argparse.Namespace], object] = args.handler
    try:
        result = handler(args)
    except WorkembedError as err:  # the user's to fix; anything else is a bug and keeps its traceback
        print(f"workembed: error: {err}", file=sys.stderr)
        return 2
    try:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
    return 0


def stage_main(name: str, argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.<name> [-q|-v] -c CONFIG [--profile P] [--set k=v ...]``: ``workembed run <name> ...``
    (which sets up logging the same way)."""
    return main(["run", name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
